r"""``DisentangledConv2d``: a Conv2d preceded (or followed) by a learned Gaussian envelope."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .envelope import GaussianEnvelope

__all__ = ["ORDERS", "DisentangledConv2d"]

#: Processing orders: envelope then convolution (eq. (3)-(4), the paper's choice) or
#: convolution then envelope (eq. (5)-(6)).
ORDERS = ("env-conv", "conv-env")


class DisentangledConv2d(nn.Conv2d):
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
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
        bias, padding_mode: as in :class:`torch.nn.Conv2d`.
        envelope_size: :math:`k_g = 2r + 1` of the envelope (paper: 9).
        order: ``"env-conv"`` or ``"conv-env"``.
        shared_sigma: one sigma for all channels (Table 1d) instead of one per channel.
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
        >>> sorted(conv.state_dict())
        ['envelope.raw_sigma', 'weight']
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
        envelope_size: int = 9,
        order: str = "env-conv",
        shared_sigma: bool = False,
        sigma_init: float = 0.0,
        envelope_padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.order = order
        self.envelope = GaussianEnvelope(
            in_channels if order == "env-conv" else out_channels,
            envelope_size,
            shared=shared_sigma,
            init=sigma_init,
            padding_mode=envelope_padding_mode,
            device=device,
            dtype=dtype,
        )

    @property
    def envelope_size(self) -> int:
        """The envelope's :math:`k_g` (settable, e.g. to shrink after training)."""
        return self.envelope.size

    @envelope_size.setter
    def envelope_size(self, value: int) -> None:
        self.envelope.size = value

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> "DisentangledConv2d":
        """Build a disentangled convolution from an existing :class:`torch.nn.Conv2d`.

        The new module has the same Conv2d arguments, ``weight`` and ``bias`` (copied by
        name), device, dtype, ``requires_grad`` flags and train/eval mode; ``kwargs`` are
        the envelope options of the constructor (``envelope_size``, ``order``,
        ``shared_sigma``, ``sigma_init``, ``envelope_padding_mode``).

        Raises:
            TypeError: if ``conv`` is not an ``nn.Conv2d``, is already disentangled,
                or is a subclass with its own ``forward`` (e.g. timm's ``Conv2dSame``,
                which pads dynamically: copying its arguments would change its output).
            ValueError: if ``conv`` is a lazy module whose weight is not materialised.
        """
        if not isinstance(conv, nn.Conv2d) or isinstance(conv, DisentangledConv2d):
            raise TypeError(
                f"from_conv expects an nn.Conv2d that is not already disentangled, "
                f"got {type(conv).__name__}"
            )
        if type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward:
            raise TypeError(
                f"from_conv cannot convert {type(conv).__name__}: it overrides nn.Conv2d's forward, "
                f"so a DisentangledConv2d with the same arguments would compute something else"
            )
        if isinstance(conv.weight, nn.parameter.UninitializedParameter):
            raise ValueError("from_conv got a lazy convolution with uninitialised weights; run one forward first")
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **kwargs,
        )
        with torch.no_grad():
            for name in ("weight", "bias"):
                source: Optional[torch.Tensor] = getattr(conv, name)
                if source is not None:
                    target = getattr(new, name)
                    target.copy_(source)
                    target.requires_grad_(source.requires_grad)
        return new.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"DisentangledConv2d expects input of shape (N, C, H, W) or (C, H, W), "
                f"got {x.dim()} dims {tuple(x.shape)}"
            )
        if x.shape[-3] != self.in_channels:
            raise ValueError(
                f"DisentangledConv2d has in_channels={self.in_channels} but the input has "
                f"{x.shape[-3]} channels (shape {tuple(x.shape)})"
            )
        if self.order == "env-conv":
            return self._conv_forward(self.envelope(x), self.weight, self.bias)
        return self.envelope(self._conv_forward(x, self.weight, self.bias))

    def extra_repr(self) -> str:
        sigma = "shared" if self.envelope.shared else "per-channel"
        return (
            f"{super().extra_repr()}, envelope_size={self.envelope.size}, "
            f"order={self.order}, sigma={sigma}"
        )
