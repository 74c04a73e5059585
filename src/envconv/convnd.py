r"""Envelope convolutions for sequences and volumes: ``nn.Conv1d`` and ``nn.Conv3d`` with a Gaussian envelope.

The 1-D and 3-D counterparts of :class:`~envconv.EnvelopeConv2d` and
:class:`~envconv.DisentangledConv2d`: the envelope (the kernel of eq. (9) along every spatial
axis, :class:`~envconv.GaussianEnvelope` with ``spatial_dims`` 1 or 3) before the convolution
(eqs. (3)-(4)) or after it (eqs. (5)-(6)). They are subclasses of ``nn.Conv1d`` / ``nn.Conv3d``,
keep ``weight`` and ``bias`` where those keep them, and a strided ``1 x 1`` convolution reads the
envelope only where it samples, as in 2-D. The disentangled layers run as the ``envconv::envelope_conv``
op where the 2-D layer runs ``envelope_conv2d`` (zero-padded convolution, numeric padding): only the
input is kept for backward, and a few-channel stem gets its sigma gradient without the
convolution's input gradient. TorchScript is not offered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import functional
from .conv import EnvelopeConvLayer, adopt_weights, check_conv_input, conv_arguments
from .envelope import GaussianEnvelope

__all__ = ["EnvelopeConv1d", "EnvelopeConv3d", "DisentangledConv1d", "DisentangledConv3d", "ENVELOPE_CONVS",
           "DISENTANGLED_CONVS"]


class _EnvelopeConvNd(EnvelopeConvLayer):
    """What the 1-D and 3-D envelope convolutions share (a mixin in front of ``nn.Conv1d`` / ``nn.Conv3d``)."""

    _base: type
    _dims: int
    _functional = None

    @classmethod
    def from_conv(cls, conv: nn.Module, **kwargs):
        """Build this layer from an existing convolution of its kind: its arguments and the same weight Parameters."""
        if not isinstance(conv, cls._base):
            raise TypeError(f"{cls.__name__} replaces an nn.{cls._base.__name__}, got {type(conv).__name__}")
        return adopt_weights(cls(**conv_arguments(conv), **kwargs), conv)

    @property
    def _sampled(self) -> bool:
        """A strided 1x1 conv without padding: it reads the envelope only every stride-th position."""
        unpadded = not isinstance(self.padding, str) and all(p == 0 for p in self.padding)
        return all(k == 1 for k in self.kernel_size) and unpadded and any(s > 1 for s in self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_conv_input(type(self).__name__, self.in_channels, x, self._dims)
        if self.order == "conv-env":
            return self.envelope(self._conv_forward(x, self.weight, self.bias))
        if self._sampled:  # exact, and cheaper: the envelope only where the convolution reads
            smoothed = self.envelope(x, stride=list(self.stride))
            return type(self)._functional(smoothed, self.weight, self.bias, 1, 0, self.dilation, self.groups)
        return self._conv_forward(self.envelope(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self._base.extra_repr(self)}, order={self.order}"


class _DisentangledConvNd:
    """The learned Gaussian envelope's constructor and op, shared by the 1-D and 3-D disentangled convolutions."""

    _dims: int
    #: Run as the ``envconv::envelope_conv`` op (as :attr:`DisentangledConv2d.recompute_envelope`).
    recompute_envelope = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self._op_padding
        if self.order != "env-conv" or padding is None:
            return super().forward(x)
        check_conv_input(type(self).__name__, self.in_channels, x, self._dims)
        env, sampled = self.envelope, self._sampled
        return functional.envelope_conv(x, env.raw_sigma, env.size, self.weight, self.bias,
                                        env_stride=self.stride if sampled else 1, padding_mode=env.padding_mode,
                                        stride=1 if sampled else self.stride, padding=padding,
                                        dilation=self.dilation, groups=self.groups, impl=env.impl)

    @property
    def envelope_size(self):
        """The envelope's :math:`k_g`, an int or one per axis (settable, e.g. to shrink after training)."""
        return self.envelope.size

    @envelope_size.setter
    def envelope_size(self, value) -> None:
        self.envelope.size = value

    @property
    def _op_padding(self):
        """The conv padding for the envelope + conv op, or ``None`` when envelope and conv run apart."""
        if not self.recompute_envelope or self.padding_mode != "zeros":
            return None
        if self._sampled or self.padding == "valid":
            return [0] * self._dims
        if isinstance(self.padding, str):  # "same": torch pads asymmetrically for even kernels
            return None
        return [int(p) for p in self.padding]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, envelope_size=9,
                 order: str = "env-conv", shared_sigma: bool = False, sigma_per_axis: bool = False,
                 sigma_init: float = 0.0, envelope_padding_mode: str = "zeros", device=None, dtype=None) -> None:
        self._check_arguments(order)
        envelope = GaussianEnvelope(in_channels if order == "env-conv" else out_channels, envelope_size,
                                    shared=shared_sigma, per_axis=sigma_per_axis, init=sigma_init,
                                    padding_mode=envelope_padding_mode,
                                    spatial_dims=self._dims, device=device, dtype=dtype)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, envelope=envelope, order=order, device=device, dtype=dtype)


class EnvelopeConv1d(_EnvelopeConvNd, nn.Conv1d):
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
    _functional = staticmethod(F.conv1d)


class EnvelopeConv3d(_EnvelopeConvNd, nn.Conv3d):
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
    _functional = staticmethod(F.conv3d)


class DisentangledConv1d(_DisentangledConvNd, EnvelopeConv1d):
    r"""Disentangled convolution for sequences :math:`(N, C, L)`: a learned Gaussian envelope, then ``nn.Conv1d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode: as in
            :class:`torch.nn.Conv1d`.
        envelope_size: :math:`k_g = 2r + 1` (paper: 9), or one per spatial axis.
        order: ``"env-conv"`` (eqs. (3)-(4)) or ``"conv-env"`` (eqs. (5)-(6)).
        shared_sigma: one sigma for all channels instead of one per channel.
        sigma_per_axis: a sigma per channel and spatial axis, ``raw_sigma`` of shape (C, n); in 3-D
            the time (or depth) axis learns its own receptive field.
        sigma_init: initial raw value :math:`\tilde\sigma` (paper: 0).
        envelope_padding_mode: the envelope's padding (``"zeros"``, ``"reflect"``, ``"replicate"``,
            ``"circular"``); it keeps the size.

    Example:
        >>> conv = DisentangledConv1d(16, 32, 5, stride=2, padding=2)
        >>> conv(torch.randn(4, 16, 100)).shape, conv.envelope.spatial_dims
        (torch.Size([4, 32, 50]), 1)
    """


class DisentangledConv3d(_DisentangledConvNd, EnvelopeConv3d):
    r"""Disentangled convolution for clips and volumes :math:`(N, C, D, H, W)`: a learned envelope, then ``nn.Conv3d``.

    Args as :class:`DisentangledConv1d`, for :class:`torch.nn.Conv3d`; ``envelope_size`` applies along every
    axis, or is a triple (depth or time, height, width).

    Example:
        >>> conv = DisentangledConv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False,
        ...                           sigma_per_axis=True)
        >>> conv(torch.randn(1, 3, 8, 32, 32)).shape, conv.envelope.raw_sigma.shape  # (time, height, width)
        (torch.Size([1, 64, 8, 16, 16]), torch.Size([3, 3]))
    """


#: The envelope convolution (any envelope module) for each convolution class it replaces.
ENVELOPE_CONVS = {nn.Conv1d: EnvelopeConv1d, nn.Conv3d: EnvelopeConv3d}
#: The disentangled convolution (learned Gaussian envelope) for each convolution class it replaces.
DISENTANGLED_CONVS = {nn.Conv1d: DisentangledConv1d, nn.Conv3d: DisentangledConv3d}
