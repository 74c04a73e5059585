r"""Convolutions with an envelope in 1-D, 2-D and 3-D, built from a plain ``nn.ConvNd`` by name.

* :class:`EnvelopeConv1d` / :class:`EnvelopeConv2d` / :class:`EnvelopeConv3d` - a channel-wise
  envelope module before (or after) the convolution.
* :class:`DisentangledConv1d` / :class:`DisentangledConv2d` / :class:`DisentangledConv3d` - the
  paper's method: the envelope is a Gaussian, learned (or fixed: ``learnable=False``).
* :class:`ConvVariant` - base of the 2-D replacement convolutions of the comparison methods:
  an ``nn.Conv2d`` subclass (so ``weight``/``bias`` keep their state-dict keys) with ``from_conv``.

All six layers share one base (:class:`EnvelopeConvNd`); each is a subclass of its ``nn.ConvNd``,
keeps ``weight`` and ``bias`` where that keeps them, and a strided ``1 x 1`` convolution reads
the envelope only where it samples. TensorFlow-"same" convolutions of other libraries (timm's
``Conv2dSame`` in its ``tf_*`` models, efficientnet-pytorch's and segmentation_models_pytorch's
``Conv2dStaticSamePadding`` and ``Conv2dDynamicSamePadding``) convert too: the replacement keeps
their asymmetric padding (:func:`tf_same_padding`), applied to the convolution's input after the
envelope.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from .envelope import GaussianEnvelope, refuse_torchscript
from .ops.composite import CONV
from .ops.dispatch import check_impl
from .state_dict import OrderRecord

__all__ = ["CONVS", "ORDERS", "TF_SAME_CONVS", "ConvVariant", "EnvelopeConvNd", "DisentangledConvNd", "EnvelopeConv1d",
           "EnvelopeConv2d", "EnvelopeConv3d", "DisentangledConv1d", "DisentangledConv2d", "DisentangledConv3d",
           "ENVELOPE_CONVS", "DISENTANGLED_CONVS", "adopt_weights", "check_conv_input", "conv_arguments",
           "tf_same_padding", "same_pad"]

#: The convolution classes envconv converts (the envelope methods; the others take nn.Conv2d only).
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Processing orders (envelope then convolution, eqs. (3)-(4), the paper's choice; or
#: convolution then envelope, eqs. (5)-(6)).
ORDERS = ("env-conv", "conv-env")


#: TF-"same" convolution classes by name, with the packages whose classes of that name pad so.
TF_SAME_CONVS = {
    "Conv2dSame": ("timm",),
    "Conv2dDynamicSamePadding": ("efficientnet_pytorch", "segmentation_models_pytorch"),
    "Conv2dStaticSamePadding": ("efficientnet_pytorch", "segmentation_models_pytorch"),
}


def tf_same_padding(conv: nn.Module) -> Optional[List[int]]:
    """How ``conv`` pads if it is a TF-"same" convolution of :data:`TF_SAME_CONVS`, else ``None``.

    Returns ``[]`` for the dynamic kind (padding computed from each input's size, see
    :func:`same_pad`) and ``[left, right, top, bottom]`` for efficientnet-pytorch's static kind
    (computed for one image size when the model was built).
    """
    cls = type(conv)
    packages = TF_SAME_CONVS.get(cls.__name__, ())
    if not isinstance(conv, nn.Conv2d) or cls.__module__.split(".")[0] not in packages:
        return None
    if cls.__name__ != "Conv2dStaticSamePadding":
        return []
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.Identity):
        return [0, 0, 0, 0]
    if isinstance(pad, nn.ZeroPad2d):
        return [int(p) for p in pad.padding]
    raise TypeError(f"cannot convert {cls.__name__}: its static_padding is a {type(pad).__name__}, "
                    f"not the ZeroPad2d or Identity it is built with")


def same_pad(x: torch.Tensor, kernel_size: List[int], stride: List[int], dilation: List[int]) -> List[int]:
    """TF-"same" padding ``[left, right, top, bottom]`` of ``x`` for a convolution: the output has ceil(size / stride).

    As timm's ``pad_same`` and efficientnet-pytorch compute it: the odd pixel goes to the right / bottom.

    Example:
        >>> same_pad(torch.zeros(1, 1, 7, 8), [3, 3], [2, 2], [1, 1])  # 7 -> 4 rows: 2 pad; 8 -> 4: 1
        [0, 1, 1, 1]
    """
    pads: List[int] = []
    for axis in (1, 0):  # F.pad's order: the last dimension (width) first
        i, k, s, d = x.shape[axis - 2], kernel_size[axis], stride[axis], dilation[axis]
        total = max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
        pads += [total // 2, total - total // 2]
    return pads


def conv_arguments(conv: nn.Module, allow_tf_same: bool = False) -> Dict[str, Any]:
    """The constructor arguments of ``conv`` (including device and dtype), by name.

    With ``allow_tf_same``, a TF-"same" convolution (:func:`tf_same_padding`) is taken too; its
    replacement must apply the padding (envelope convolutions do).

    Raises:
        TypeError: if ``conv`` is not an ``nn.Conv2d``, is already a :class:`ConvVariant`,
            or is a subclass with its own ``forward`` (other than the TF-"same" ones
            allowed), since copying its arguments would change its output.
        ValueError: if ``conv`` is a lazy module whose weight is not materialised.
    """
    base = next((b for b in CONVS if isinstance(conv, b)), None)
    if base is None:
        raise TypeError(f"expected an nn.Conv2d (or nn.Conv1d / nn.Conv3d), got {type(conv).__name__}")
    if isinstance(conv, ConvVariant) or hasattr(conv, "envelope"):
        raise TypeError(f"this convolution is already converted ({type(conv).__name__}); convert a plain nn.Conv2d")
    tf_same = tf_same_padding(conv)
    if tf_same is not None and not allow_tf_same:
        raise TypeError(f"cannot convert {type(conv).__name__} with this method: it pads like TensorFlow's 'same', "
                        f"which only the envelope methods (gaussian, fixed, dw, ...) keep")
    if tf_same is None and (type(conv).forward is not base.forward
                            or type(conv)._conv_forward is not base._conv_forward):
        raise TypeError(
            f"cannot convert {type(conv).__name__}: it overrides nn.{base.__name__}'s forward, "
            f"so a replacement with the same arguments would compute something else"
        )
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        raise ValueError("got a lazy convolution with uninitialised weights; run one forward first")
    return dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=(0, 0) if type(conv).__name__ == "Conv2dSame" else conv.padding,  # timm's ignores its padding
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


class ConvVariant(nn.Conv2d):
    """Base class of the convolutions that replace an ``nn.Conv2d`` in a model.

    Subclasses add parameters or buffers and override ``forward``; ``weight`` and
    ``bias`` stay where ``nn.Conv2d`` keeps them, so a converted model's state dict is
    the original's plus the new entries.

    Example:
        >>> plain = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        >>> conv = DisentangledConv2d.from_conv(plain, envelope_size=5)  # a ConvVariant
        >>> isinstance(conv, ConvVariant), torch.equal(conv.weight, plain.weight), conv.stride
        (True, True, (2, 2))
    """

    #: The TF-"same" padding this layer applies to its convolution's input (see :func:`~envconv.conv.tf_same_padding`):
    #: ``None`` (none), ``[]`` (dynamic) or ``[left, right, top, bottom]``; only envelope convolutions take it.
    tf_same: Optional[List[int]] = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs):
        """Build this variant from an existing :class:`torch.nn.Conv2d`.

        The new module has the same Conv2d arguments, ``weight`` and ``bias`` (the same
        ``Parameter`` objects, so a weight shared with another layer stays shared), device,
        dtype, ``requires_grad`` flags and train/eval mode; ``kwargs`` are
        the variant's own constructor options. A frozen convolution (weight without
        gradient, as a detection backbone's frozen stem) gives a frozen variant: its new
        parameters do not train either.

        Raises:
            TypeError, ValueError: see :func:`~envconv.conv.conv_arguments`.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{cls.__name__} replaces an nn.Conv2d, got {type(conv).__name__} (1-D and 3-D "
                            f"convolutions: envconv.DisentangledConv1d / DisentangledConv3d, methods 'gaussian' and "
                            f"'fixed')")
        return adopt_weights(cls(**conv_arguments(conv), **kwargs), conv)

    def _check_input(self, x: torch.Tensor) -> None:
        check_conv_input(type(self).__name__, self.in_channels, x)


def adopt_weights(new: nn.Module, conv: nn.Module) -> nn.Module:
    """Give the replacement ``new`` the weight and bias of ``conv`` (the same Parameters), its mode and frozenness.

    A frozen convolution (weight without gradient) gives a frozen replacement: its own new
    parameters (the envelope's sigma) do not train either. Returns ``new``.
    """
    for name in ("weight", "bias"):
        source = getattr(conv, name)
        if isinstance(source, nn.Parameter):  # the same Parameter: ties stay tied (as timm's converters do)
            setattr(new, name, source)
        elif source is not None:  # e.g. a parametrized weight: its current value
            with torch.no_grad():
                getattr(new, name).copy_(source)
    if not conv.weight.requires_grad:
        for name, param in new.named_parameters():
            if name not in ("weight", "bias"):
                param.requires_grad_(False)
    return new.train(conv.training)


def check_conv_input(layer: str, in_channels: int, x: torch.Tensor, spatial_dims: int = 2) -> None:
    """Raise naming the problem unless ``x`` is ``(N, C, H, W)`` or ``(C, H, W)`` with ``C == in_channels``.

    ``spatial_dims`` 1 or 3: ``(N, C, L)`` / ``(N, C, D, H, W)``, with or without ``N``. Under
    ``torch.fx.symbolic_trace`` it is recorded as a node (:func:`torch.fx.wrap`), so the traced
    module checks the real input when it runs.
    """
    if x.dim() not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(
            f"{layer} expects input of shape {functional.INPUT_SHAPES[spatial_dims]}, "
            f"got {x.dim()} dims {tuple(x.shape)}"
        )
    channels = x.shape[-spatial_dims - 1]
    if channels != in_channels:
        raise ValueError(
            f"{layer} has in_channels={in_channels} but the input has "
            f"{channels} channels (shape {tuple(x.shape)})"
        )


class EnvelopeConvNd(OrderRecord):
    r"""The envelope convolutions' base, 1-D to 3-D: a mixin in front of the ``nn.ConvNd`` it extends.

    ``order="env-conv"``: :math:`Y = \mathbf F * E(X)`, the envelope :math:`E` acting on the
    :math:`C` input channels; ``order="conv-env"``: :math:`Y = E(\mathbf F * X)` on the :math:`D`
    output channels. :math:`E` must keep the shape of its input. The order is recorded with the
    weights (:class:`~envconv.state_dict.OrderRecord`).
    """

    _orders = ORDERS  # the order record (state_dict.OrderRecord)
    _base: type  # nn.Conv1d / nn.Conv2d / nn.Conv3d
    _dims: int
    tf_same: Optional[List[int]] = None

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, Sequence[int]],
                 stride: Union[int, Sequence[int]] = 1, padding: Union[str, int, Sequence[int]] = 0,
                 dilation: Union[int, Sequence[int]] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, envelope: nn.Module,
                 order: str = "env-conv", device=None, dtype=None) -> None:
        self._check_arguments(order, envelope)
        dims = getattr(envelope, "spatial_dims", self._dims)
        if dims != self._dims:  # a 2-D envelope would read an (N, C, L) batch as one unbatched image
            raise ValueError(f"{type(self).__name__} filters {self._dims}-D maps but its envelope is {dims}-D; build "
                             f"the envelope with spatial_dims={self._dims}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        self.order = order
        self.envelope = envelope

    @classmethod
    def from_conv(cls, conv: nn.Module, **kwargs):
        """Build this layer from an ``nn.ConvNd`` of its kind: its arguments and the same weight Parameters.

        ``kwargs`` are the layer's own options. A frozen convolution gives a frozen layer, and a
        TF-"same" convolution a layer that pads the same way (see :func:`adopt_weights`,
        :func:`tf_same_padding`).

        Raises:
            TypeError, ValueError: see :func:`~envconv.conv.conv_arguments`.
        """
        if not isinstance(conv, cls._base):
            raise TypeError(f"{cls.__name__} replaces an nn.{cls._base.__name__}, got {type(conv).__name__}")
        new = cls(**conv_arguments(conv, allow_tf_same=True), **kwargs)
        new.tf_same = tf_same_padding(conv)
        return adopt_weights(new, conv)

    @property
    def _sampled(self) -> bool:
        """A strided 1x1 conv without padding: it reads the envelope only every stride-th position."""
        unpadded = self.padding == "valid" or (not isinstance(self.padding, str) and not any(self.padding))
        unpadded = unpadded and not any(self.tf_same or [])  # TF-"same" pads no 1x1 conv
        return all(k == 1 for k in self.kernel_size) and unpadded and any(s > 1 for s in self.stride)

    def _tf_pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded as the TF-"same" convolution this layer replaced padded it (unchanged for any other)."""
        pad = self.tf_same
        if pad is None:
            return x
        if len(pad) == 0:
            pad = same_pad(x, list(self.kernel_size), list(self.stride), list(self.dilation))
        return F.pad(x, pad)

    def _check_input(self, x: torch.Tensor) -> None:
        check_conv_input(type(self).__name__, self.in_channels, x, self._dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.order == "conv-env":
            return self.envelope(self._conv_forward(self._tf_pad(x), self.weight, self.bias))
        if self._sampled and isinstance(self.envelope, GaussianEnvelope):
            # exact, and 2-4x cheaper on a ResNet's identity path: smooth only where the conv reads
            smoothed = self.envelope(x, stride=list(self.stride))
            return CONV[self._dims + 2](smoothed, self.weight, self.bias, 1, 0, self.dilation, self.groups)
        return self._conv_forward(self._tf_pad(self.envelope(x)), self.weight, self.bias)

    def __prepare_scriptable__(self):
        refuse_torchscript(self)

    def extra_repr(self) -> str:
        same = "" if self.tf_same is None else f", tf_same={self.tf_same or 'dynamic'}"
        return f"{self._base.extra_repr(self)}, order={self.order}{same}"


class DisentangledConvNd(EnvelopeConvNd):
    r"""Disentangled convolution, 1-D to 3-D: a Gaussian envelope :math:`\mathbf g`, then the filter :math:`\mathbf F`.

    The filter is :math:`w = \mathbf g(\cdot;\sigma) * \mathbf F` (eq. (1)), applied as two
    successive operations. With ``order="env-conv"`` (eqs. (3)-(4), the paper's default) the
    :math:`C` input channels are smoothed, each with its own :math:`\sigma_c`, then convolved:

    .. math::

        \bar X(\cdot,c) = \mathbf g(\cdot;\sigma_c) * X(\cdot,c), \qquad
        Y(\cdot,d) = \sum_{c=1}^{C} \mathbf F(\cdot,c,d) * \bar X(\cdot,c).

    With ``order="conv-env"`` (eqs. (5)-(6)) the convolution comes first and the :math:`D` output
    channels are smoothed with :math:`\sigma_d`. The envelope is the child module ``.envelope`` (a
    :class:`~envconv.GaussianEnvelope`); its sigma appears in the state dict as ``envelope.raw_sigma``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode: as in
            :class:`torch.nn.Conv2d` (``Conv1d`` / ``Conv3d``).
        envelope_size: :math:`k_g = 2r + 1` of the envelope (paper: 9), an int or one per spatial axis.
        order: ``"env-conv"`` or ``"conv-env"``.
        shared_sigma: one sigma for all channels (Table 1d) instead of one per channel.
        sigma_per_axis: a sigma per channel and spatial axis, ``raw_sigma`` of shape (C, n).
        sigma_init: initial raw value :math:`\tilde\sigma` (paper: 0, i.e. :math:`\sigma = 0.833`).
        learnable: ``False`` keeps sigma at its initial value (a buffer, not a parameter; Table 1h's
            fixed sigma, and the control that says whether learning sigma matters).
        envelope_padding_mode: padding of the envelope (``"zeros"``, ``"reflect"``,
            ``"replicate"``, ``"circular"``); it always keeps the spatial size.
        impl: the envelope's implementation: ``"auto"`` (:mod:`envconv.ops.dispatch` decides) or one
            of :data:`~envconv.ops.dispatch.IMPLS` (settable later as ``layer.envelope.impl``).
        recompute_envelope: run as the ``envconv::envelope_conv`` op, which keeps only the input for
            the backward pass and recomputes the envelope there (two fewer feature maps per layer;
            one envelope forward more). ``False``: the envelope op and a plain conv, autograd between.

    Shape:
        - Input: :math:`(N, C, *\text{spatial})` or :math:`(C, *\text{spatial})`.
        - Output: as the ``nn.ConvNd`` with the same arguments returns.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Union[int, Sequence[int]],
                 stride: Union[int, Sequence[int]] = 1, padding: Union[str, int, Sequence[int]] = 0,
                 dilation: Union[int, Sequence[int]] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, envelope_size: Union[int, Sequence[int]] = 9,
                 order: str = "env-conv", shared_sigma: bool = False, sigma_per_axis: bool = False,
                 sigma_init: float = 0.0, learnable: bool = True, envelope_padding_mode: str = "zeros",
                 impl: str = "auto", recompute_envelope: bool = True, device=None, dtype=None) -> None:
        self._check_arguments(order)
        envelope = GaussianEnvelope(in_channels if order == "env-conv" else out_channels, envelope_size,
                                    shared=shared_sigma, per_axis=sigma_per_axis, init=sigma_init, learnable=learnable,
                                    padding_mode=envelope_padding_mode, spatial_dims=self._dims, device=device,
                                    dtype=dtype)
        envelope.impl = check_impl(impl)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, envelope=envelope, order=order, device=device, dtype=dtype)
        self.recompute_envelope = bool(recompute_envelope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self._op_padding
        if self.order != "env-conv" or padding is None:
            return super().forward(x)
        self._check_input(x)
        env, sampled = self.envelope, self._sampled
        return functional.envelope_conv(x, env.raw_sigma, env.size, self.weight, self.bias,
                                        env_stride=self.stride if sampled else 1, padding_mode=env.padding_mode,
                                        stride=1 if sampled else self.stride, padding=padding,
                                        dilation=self.dilation, groups=self.groups, impl=env.impl)

    @property
    def _op_padding(self) -> Optional[List[int]]:
        """The conv padding for the envelope + conv op, or ``None`` when the layer runs envelope and conv apart."""
        if not self.recompute_envelope or self.padding_mode != "zeros":
            return None
        if self._sampled or (self.padding == "valid" and self.tf_same is None):
            return [0] * self._dims
        if isinstance(self.padding, str) or self.tf_same is not None:  # "same" / TF-"same": asymmetric, padded apart
            return None
        return [int(p) for p in self.padding]

    @property
    def envelope_size(self) -> Union[int, Tuple[int, ...]]:
        """The envelope's :math:`k_g`, an int or one per axis (settable, e.g. to shrink after training)."""
        return self.envelope.size

    @envelope_size.setter
    def envelope_size(self, value: Union[int, Sequence[int]]) -> None:
        self.envelope.size = value

    def extra_repr(self) -> str:
        env = self.envelope
        sigma = ("shared" if env.shared else "per-channel") + (" per-axis" if env.per_axis else "")
        sigma += "" if env.learnable else ", learnable=False"
        same = "" if self.tf_same is None else f", tf_same={self.tf_same or 'dynamic'}"
        return f"{self._base.extra_repr(self)}, envelope_size={env.size}, order={self.order}, sigma={sigma}{same}"


class EnvelopeConv1d(EnvelopeConvNd, nn.Conv1d):
    r"""An ``nn.Conv1d`` with a channel-wise envelope module before (``order="env-conv"``) or after it.

    Args:
        in_channels, ..., padding_mode: as in :class:`torch.nn.Conv1d`.
        envelope: the envelope module over the input (or output) channels, e.g.
            ``GaussianEnvelope(C, spatial_dims=1)``.
        order: ``"env-conv"`` or ``"conv-env"``.

    Example:
        >>> env = GaussianEnvelope.fixed(4, sigma=0.0, spatial_dims=1)
        >>> conv = nn.Conv1d(4, 8, 3, stride=2)
        >>> x = torch.randn(2, 4, 16)
        >>> bool(torch.equal(EnvelopeConv1d.from_conv(conv, envelope=env)(x), conv(x)))  # sigma 0: the conv itself
        True
    """

    _base, _dims = nn.Conv1d, 1


class EnvelopeConv2d(EnvelopeConvNd, ConvVariant):
    r"""An ``nn.Conv2d`` with a channel-wise envelope module before (``order="env-conv"``) or after it.

    The comparison methods of :mod:`envconv.methods` (depth-wise filters, attention maps, ensembles,
    curriculum smoothing) are envelopes of this kind; :class:`DisentangledConv2d` is the case of a
    Gaussian.

    Args:
        in_channels, ..., padding_mode: as in :class:`torch.nn.Conv2d`.
        envelope: the envelope module (already on the right device and dtype).
        order: ``"env-conv"`` or ``"conv-env"``.

    Example:
        >>> env = GaussianEnvelope.fixed(4, sigma=0.5, size=5)
        >>> conv = EnvelopeConv2d(4, 8, 3, padding=1, envelope=env)
        >>> conv(torch.randn(1, 4, 6, 6)).shape
        torch.Size([1, 8, 6, 6])
    """

    _base, _dims = nn.Conv2d, 2


class EnvelopeConv3d(EnvelopeConvNd, nn.Conv3d):
    r"""An ``nn.Conv3d`` with a channel-wise envelope module before (``order="env-conv"``) or after it.

    Args and shapes as :class:`EnvelopeConv1d`, for :class:`torch.nn.Conv3d` and inputs :math:`(N, C, D, H, W)`.

    Example:
        >>> env = GaussianEnvelope.fixed(3, sigma=0.0, spatial_dims=3)
        >>> conv = nn.Conv3d(3, 8, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
        >>> x = torch.randn(1, 3, 4, 16, 16)
        >>> bool(torch.equal(EnvelopeConv3d.from_conv(conv, envelope=env)(x), conv(x)))
        True
    """

    _base, _dims = nn.Conv3d, 3


class DisentangledConv1d(DisentangledConvNd, EnvelopeConv1d):
    r"""Disentangled convolution for sequences :math:`(N, C, L)`: a Gaussian envelope, then ``nn.Conv1d``.

    Args as :class:`~envconv.conv.DisentangledConvNd`, for :class:`torch.nn.Conv1d`.

    Example:
        >>> conv = DisentangledConv1d(16, 32, 5, stride=2, padding=2)
        >>> conv(torch.randn(4, 16, 100)).shape, conv.envelope.spatial_dims
        (torch.Size([4, 32, 50]), 1)
    """


class DisentangledConv2d(DisentangledConvNd, EnvelopeConv2d):
    r"""Disentangled convolution for images :math:`(N, C, H, W)`: a Gaussian envelope, then ``nn.Conv2d``.

    Args as :class:`~envconv.conv.DisentangledConvNd`, for :class:`torch.nn.Conv2d`; ``envelope_size`` may be a pair
    (height, width), and a ``sigma_per_axis`` envelope has ``raw_sigma`` of shape (C, 2).

    Example:
        >>> conv = DisentangledConv2d(16, 32, 3, stride=2, padding=1, bias=False)
        >>> conv(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 32, 16, 16])
        >>> sorted(conv.state_dict())  # the records keep k_g and the order with the weights
        ['_extra_state', 'envelope._extra_state', 'envelope.raw_sigma', 'weight']
        >>> fixed = DisentangledConv2d(16, 32, 3, learnable=False)  # sigma stays 0.833: a buffer
        >>> [name for name, _ in fixed.named_parameters()]
        ['weight', 'bias']
    """


class DisentangledConv3d(DisentangledConvNd, EnvelopeConv3d):
    r"""Disentangled convolution for clips and volumes :math:`(N, C, D, H, W)`: a Gaussian envelope, then ``nn.Conv3d``.

    Args as :class:`~envconv.conv.DisentangledConvNd`, for :class:`torch.nn.Conv3d`; ``envelope_size``
    applies along every axis, or is a triple (depth or time, height, width).

    Example:
        >>> conv = DisentangledConv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False,
        ...                           sigma_per_axis=True)
        >>> conv(torch.randn(1, 3, 8, 32, 32)).shape, conv.envelope.raw_sigma.shape  # (time, height, width)
        (torch.Size([1, 64, 8, 16, 16]), torch.Size([3, 3]))
    """


#: The envelope convolution (any envelope module) for each convolution class it replaces.
ENVELOPE_CONVS = {nn.Conv1d: EnvelopeConv1d, nn.Conv2d: EnvelopeConv2d, nn.Conv3d: EnvelopeConv3d}
#: The disentangled convolution (Gaussian envelope) for each convolution class it replaces.
DISENTANGLED_CONVS = {nn.Conv1d: DisentangledConv1d, nn.Conv2d: DisentangledConv2d, nn.Conv3d: DisentangledConv3d}


torch.fx.wrap("check_conv_input")
