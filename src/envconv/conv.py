r"""Convolutions with extra machinery, built from a plain ``nn.Conv2d`` by name.

* :class:`ConvVariant` - base of every replacement convolution: an ``nn.Conv2d``
  subclass (so ``weight``/``bias`` keep their state-dict keys) with ``from_conv``.
* :class:`EnvelopeConv2d` - a channel-wise envelope module before (or after) the conv.
* :class:`DisentangledConv2d` - the paper's method: the envelope is a learned Gaussian.

TensorFlow-"same" convolutions of other libraries (timm's ``Conv2dSame`` in its ``tf_*``
models, efficientnet-pytorch's and segmentation_models_pytorch's ``Conv2dStaticSamePadding``
and ``Conv2dDynamicSamePadding``) convert too: the replacement keeps their asymmetric padding
(:func:`tf_same_padding`), applied to the convolution's input after the envelope.
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from .envelope import GaussianEnvelope
from .state_dict import OrderRecord

__all__ = ["CONVS", "ORDERS", "TF_SAME_CONVS", "ConvVariant", "EnvelopeConv2d", "DisentangledConv2d", "adopt_weights",
           "check_conv_input", "conv_arguments", "tf_same_padding", "same_pad"]

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
    #: ``None`` (none), ``[]`` (dynamic) or ``[left, right, top, bottom]``.
    tf_same: Optional[List[int]]
    _takes_tf_same = False  # only replacements whose forward applies tf_same accept such convolutions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tf_same = None  # an instance attribute, which TorchScript can see; from_conv sets it

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs):
        """Build this variant from an existing :class:`torch.nn.Conv2d`.

        The new module has the same Conv2d arguments, ``weight`` and ``bias`` (the same
        ``Parameter`` objects, so a weight shared with another layer stays shared), device,
        dtype, ``requires_grad`` flags and train/eval mode; ``kwargs`` are
        the variant's own constructor options. A frozen convolution (weight without
        gradient, as a detection backbone's frozen stem) gives a frozen variant: its new
        parameters (the envelope's sigma) do not train either.

        A TF-"same" convolution (timm's ``Conv2dSame``, efficientnet-pytorch's) gives a variant
        that pads the same way (``tf_same``), where the variant supports it.

        Raises:
            TypeError, ValueError: see :func:`~envconv.conv.conv_arguments`.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{cls.__name__} replaces an nn.Conv2d, got {type(conv).__name__} (1-D and 3-D "
                            f"convolutions: envconv.DisentangledConv1d / DisentangledConv3d, methods 'gaussian' and "
                            f"'fixed')")
        new = cls(**conv_arguments(conv, allow_tf_same=cls._takes_tf_same), **kwargs)
        new.tf_same = tf_same_padding(conv)
        return adopt_weights(new, conv)

    def _check_input(self, x: torch.Tensor) -> None:
        check_conv_input(type(self).__name__, self.in_channels, x)

    def _tf_pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded as the TF-"same" convolution this layer replaced padded it (unchanged for any other)."""
        pad = self.tf_same
        if pad is None:
            return x
        if len(pad) == 0:
            pad = same_pad(x, [self.kernel_size[0], self.kernel_size[1]], [self.stride[0], self.stride[1]],
                           [self.dilation[0], self.dilation[1]])
        return F.pad(x, pad)


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


_SHAPES = {1: "(N, C, L) or (C, L)", 2: "(N, C, H, W) or (C, H, W)", 3: "(N, C, D, H, W) or (C, D, H, W)"}


def check_conv_input(layer: str, in_channels: int, x: torch.Tensor, spatial_dims: int = 2) -> None:
    """Raise naming the problem unless ``x`` is ``(N, C, H, W)`` or ``(C, H, W)`` with ``C == in_channels``.

    ``spatial_dims`` 1 or 3: ``(N, C, L)`` / ``(N, C, D, H, W)``, with or without ``N``. Under
    ``torch.fx.symbolic_trace`` it is recorded as a node (:func:`torch.fx.wrap`), so the traced
    module checks the real input when it runs.
    """
    if x.dim() not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(
            f"{layer} expects input of shape {_SHAPES[spatial_dims]}, "
            f"got {x.dim()} dims {tuple(x.shape)}"
        )
    channels = x.shape[-spatial_dims - 1]
    if channels != in_channels:
        raise ValueError(
            f"{layer} has in_channels={in_channels} but the input has "
            f"{channels} channels (shape {tuple(x.shape)})"
        )


class EnvelopeConvLayer(OrderRecord):
    """The constructor of every envelope convolution, 1-D to 3-D (a mixin in front of the ``nn.ConvNd``).

    The convolution's own arguments, then ``envelope`` (a module) and ``order`` (one of
    :data:`ORDERS`, recorded with the weights by :class:`~envconv.state_dict.OrderRecord`).
    """

    _orders = ORDERS  # the order record (state_dict.OrderRecord)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, envelope: nn.Module,
                 order: str = "env-conv", device=None, dtype=None) -> None:
        self._check_arguments(order, envelope)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        self.order = order
        self.envelope = envelope


class EnvelopeConv2d(EnvelopeConvLayer, ConvVariant):
    r"""A convolution with a channel-wise envelope module before or after it.

    ``order="env-conv"``: :math:`Y = \mathbf F * E(X)`, where ``envelope`` :math:`E` acts
    on the :math:`C` input channels; ``order="conv-env"``: :math:`Y = E(\mathbf F * X)` on
    the :math:`D` output channels. :math:`E` must keep the shape of its input. The
    comparison methods of :mod:`envconv.methods` (depth-wise filters, attention maps,
    ensembles, curriculum smoothing) are envelopes of this kind;
    :class:`DisentangledConv2d` is the case of a learned Gaussian.

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

    _takes_tf_same = True
    tf_same: Optional[List[int]]  # TorchScript reads a class's own annotations only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.order == "env-conv":
            return self._conv_forward(self._tf_pad(self.envelope(x)), self.weight, self.bias)
        return self.envelope(self._conv_forward(self._tf_pad(x), self.weight, self.bias))

    def extra_repr(self) -> str:
        same = "" if self.tf_same is None else f", tf_same={self.tf_same or 'dynamic'}"
        return f"{super().extra_repr()}, order={self.order}{same}"


class DisentangledConv2d(EnvelopeConv2d):
    r"""Disentangled convolution: Gaussian envelope :math:`\mathbf g` and discrete filter :math:`\mathbf F`.

    The filter is :math:`w = \mathbf g(\cdot;\sigma) * \mathbf F` (eq. (1)), applied as
    two successive operations. With ``order="env-conv"`` (eq. (3)-(4), the paper's
    default) the :math:`C` input channels are smoothed, each with its own
    :math:`\sigma_c`, then convolved:

    .. math::

        \bar X(\cdot,\cdot,c) = \mathbf g(\cdot,\cdot;\sigma_c) * X(\cdot,\cdot,c), \qquad
        Y(\cdot,\cdot,d) = \sum_{c=1}^{C} \mathbf F(\cdot,\cdot,c,d) * \bar X(\cdot,\cdot,c).

    With ``order="conv-env"`` (eq. (5)-(6)) the convolution comes first and the
    :math:`D` output channels are smoothed with :math:`\sigma_d`.

    This is a subclass of :class:`torch.nn.Conv2d`: ``weight``, ``bias`` and every
    Conv2d argument behave exactly as there. The envelope is the child module
    ``.envelope`` (a :class:`~envconv.GaussianEnvelope`); its parameter appears in the
    state dict as ``envelope.raw_sigma``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode: as in
            :class:`torch.nn.Conv2d`.
        envelope_size: :math:`k_g = 2r + 1` of the envelope (paper: 9), or a pair (height, width).
        order: ``"env-conv"`` or ``"conv-env"``.
        shared_sigma: one sigma for all channels (Table 1d) instead of one per channel.
        sigma_per_axis: a sigma per channel and axis (height, width), ``raw_sigma`` of shape (C, 2).
        sigma_init: initial raw value :math:`\tilde\sigma` (paper: 0).
        envelope_padding_mode: padding of the envelope (``"zeros"``, ``"reflect"``,
            ``"replicate"``, ``"circular"``); it always keeps the spatial size.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`.
        - Output: :math:`(N, D, H_{out}, W_{out})` or :math:`(D, H_{out}, W_{out})`, as
          for :class:`torch.nn.Conv2d` with the same arguments.

    Example:
        >>> conv = DisentangledConv2d(16, 32, 3, stride=2, padding=1, bias=False)
        >>> conv(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 32, 16, 16])
        >>> sorted(conv.state_dict())  # the records keep k_g and the order with the weights
        ['_extra_state', 'envelope._extra_state', 'envelope.raw_sigma', 'weight']
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        envelope_size: Union[int, Tuple[int, int]] = 9,
        order: str = "env-conv",
        shared_sigma: bool = False,
        sigma_per_axis: bool = False,
        sigma_init: float = 0.0,
        envelope_padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        self._check_arguments(order)
        envelope = GaussianEnvelope(
            in_channels if order == "env-conv" else out_channels,
            envelope_size,
            shared=shared_sigma,
            per_axis=sigma_per_axis,
            init=sigma_init,
            padding_mode=envelope_padding_mode,
            device=device,
            dtype=dtype,
        )
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, envelope=envelope, order=order,
                         device=device, dtype=dtype)
        #: Run as the ``envconv::envelope_conv2d`` op, which keeps only the input for the backward
        #: pass and recomputes the envelope there (two fewer feature maps per layer; one envelope
        #: forward more). ``False``: the envelope op and a plain conv, autograd between them.
        self.recompute_envelope = True

    __jit_unused_properties__ = ["envelope_size", "_sampled", "_op_padding"]
    # Set by __prepare_scriptable__; typed here because TorchScript cannot infer an empty list's type.
    _script_padding: List[int]
    _script_sampled: bool
    tf_same: Optional[List[int]]  # TorchScript reads a class's own annotations only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(x)
        return self._forward(x)

    def _scripted_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward under ``torch.jit.script``: the envelope + conv op on a 4-D input, as eager runs it."""
        env = self.envelope
        if self.order != "env-conv":
            return env(self._conv_forward(self._tf_pad(x), self.weight, self.bias))
        op_padding = self._script_padding
        if len(op_padding) == 0:
            return self._conv_forward(self._tf_pad(env(x)), self.weight, self.bias)
        sampled = self._script_sampled
        env_stride = [self.stride[0], self.stride[1]] if sampled else [1, 1]
        conv_stride = [1, 1] if sampled else [self.stride[0], self.stride[1]]
        return torch.ops.envconv.envelope_conv2d(x, env.raw_sigma, self.weight, self.bias, env._size, env_stride,
                                                 env.padding_mode, env.impl, conv_stride, op_padding,
                                                 [self.dilation[0], self.dilation[1]], self.groups, env._axis_sizes)

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script``: fix the op's arguments as plain attributes the script reads."""
        self._script_sampled = self._sampled
        padding = self._op_padding
        self._script_padding = padding if padding is not None else []
        return self

    @property
    def _sampled(self) -> bool:
        """A strided 1x1 conv without padding: it reads the envelope only every stride-th pixel."""
        unpadded = self.padding in ((0, 0), "valid") and not any(self.tf_same or [])  # TF-"same" pads no 1x1 conv
        return self.kernel_size == (1, 1) and unpadded and self.stride != (1, 1)

    @property
    def _op_padding(self) -> Optional[List[int]]:
        """The conv padding for the envelope + conv op, or ``None`` when the layer runs envelope and conv apart."""
        if not self.recompute_envelope or self.padding_mode != "zeros":
            return None
        if self._sampled or (self.padding == "valid" and self.tf_same is None):
            return [0, 0]
        if isinstance(self.padding, str) or self.tf_same is not None:  # TF-"same": padded apart, asymmetric
            return None
        return [int(self.padding[0]), int(self.padding[1])]

    @torch.jit.unused
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order != "env-conv":
            return super().forward(x)
        self._check_input(x)
        env, weight, bias = self.envelope, self.weight, self.bias
        # A strided 1x1 conv reads one pixel in stride^2: smooth only at those (exact, and
        # 2-4x cheaper on the identity path of a ResNet).
        sampled = self._sampled
        padding = self._op_padding
        if padding is None:
            smoothed = env(x, stride=self.stride) if sampled else env(x)
            if sampled:
                return F.conv2d(smoothed, weight, bias, 1, 0, self.dilation, self.groups)
            return self._conv_forward(self._tf_pad(smoothed), weight, bias)
        return functional.envelope_conv2d(x, env.raw_sigma, env.size, weight, bias,
                                          env_stride=self.stride if sampled else 1, padding_mode=env.padding_mode,
                                          stride=1 if sampled else self.stride, padding=padding,
                                          dilation=self.dilation, groups=self.groups, impl=env.impl)

    @property
    def envelope_size(self) -> Union[int, Tuple[int, ...]]:
        """The envelope's :math:`k_g`, an int or one per axis (settable, e.g. to shrink after training)."""
        return self.envelope.size

    @envelope_size.setter
    def envelope_size(self, value: Union[int, Tuple[int, ...]]) -> None:
        self.envelope.size = value

    def extra_repr(self) -> str:
        sigma = ("shared" if self.envelope.shared else "per-channel") + (" per-axis" if self.envelope.per_axis else "")
        if self.tf_same is not None:
            sigma += f", tf_same={self.tf_same or 'dynamic'}"
        return f"{nn.Conv2d.extra_repr(self)}, envelope_size={self.envelope.size}, order={self.order}, sigma={sigma}"


torch.fx.wrap("check_conv_input")
