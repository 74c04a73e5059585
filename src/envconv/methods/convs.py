r"""Comparison methods that change the convolution itself rather than adding an envelope.

* :class:`ProjectionConv2d` - eq. (15), "+Proj.": a pooled channel mean added per output.
* :class:`LocalSEConv2d` - eq. (16), "+SE": local squeeze-excitation gating each input channel.
* :class:`MultiplicativeEnvelopeConv2d` - eq. (10), "Mult.": the filter multiplied by a Gaussian window.

:math:`\bar X_{avg}` in eqs. (15)-(16) is a :math:`k_g \times k_g` average pooling of
the input (zero padding counted, like a box filter), read at the positions where the
convolution is centred; the convolution must therefore be centred on its output
positions (odd kernel, ``padding = dilation * (kernel_size - 1) / 2``), which every
ResNet, MobileNet and RegNet convolution is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels as EF
from ..conv import ConvVariant

__all__ = ["ProjectionConv2d", "LocalSEConv2d", "MultiplicativeEnvelopeConv2d"]


class _PooledConv2d(ConvVariant):
    """A convolution that also reads a k_g x k_g average pooling of its input at its output positions."""

    def __init__(self, *args, pool_size: int = 9, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pool_size = EF.check_envelope_size(pool_size, "pool_size (envelope_size)")
        padding = self.padding
        if isinstance(padding, str):
            if padding == "valid" and all(k == 1 for k in self.kernel_size):
                padding = (0, 0)
            elif padding == "same" and all(k % 2 == 1 for k in self.kernel_size):
                padding = tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))
        centred = not isinstance(padding, str) and all(
            k % 2 == 1 and p == d * (k - 1) // 2 for k, p, d in zip(self.kernel_size, padding, self.dilation)
        )
        if not centred:
            raise ValueError(
                f"{type(self).__name__} needs a convolution centred on its outputs (odd kernel and "
                f"padding = dilation * (kernel_size - 1) / 2), got kernel_size={self.kernel_size}, "
                f"padding={self.padding}, dilation={self.dilation}"
            )

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\bar X_{avg}` at the output positions, shape :math:`(N, C, H_{out}, W_{out})`."""
        return F.avg_pool2d(x, self.pool_size, stride=self.stride, padding=self.pool_size // 2, count_include_pad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return self._forward(x)


class ProjectionConv2d(_PooledConv2d):
    r"""Convolution plus a projection of the pooled channel mean (eq. (15), "+Proj.").

    .. math::

        Y(x,y,d) = \sum_{c=1}^{C} \mathbf F(\cdot,\cdot,c,d) * X(\cdot,\cdot,c)\,(x,y)
                   + w_d\,\frac1C \sum_{c=1}^{C} \bar X_{avg}(x,y,c)

    with :math:`D` extra weights :math:`w_d`, initialised to 0 (the layer starts as the
    original convolution). Pooling and channel mean commute, so the mean is taken first.

    Example:
        >>> conv = ProjectionConv2d(4, 8, 3, stride=2, padding=1, pool_size=5)
        >>> conv(torch.randn(1, 4, 9, 9)).shape
        torch.Size([1, 8, 5, 5])
    """

    def __init__(self, *args, pool_size: int = 9, **kwargs) -> None:
        super().__init__(*args, pool_size=pool_size, **kwargs)
        self.proj_weight = nn.Parameter(torch.zeros(self.out_channels, device=self.weight.device,
                                                    dtype=self.weight.dtype))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(x, self.weight, self.bias)
        return y + self.proj_weight.view(1, -1, 1, 1) * self.pooled(x.mean(1, keepdim=True))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pool_size={self.pool_size}"


class LocalSEConv2d(_PooledConv2d):
    r"""Convolution with local squeeze-excitation on each input channel (eq. (16), "+SE").

    .. math::

        Y(x,y,d) = \sum_{c=1}^{C} \operatorname{sigmoid}\big(\alpha_c \bar X_{avg}(x,y,c)\big)
                   \big[\mathbf F(\cdot,\cdot,c,d) * X(\cdot,\cdot,c)\big](x,y)

    with :math:`C` extra parameters :math:`\alpha_c`, initialised to 0 (every gate 1/2).
    The gate depends on the output position *and* the input channel, so it cannot be
    folded into the input or the output: the layer is computed exactly, by unfolding
    the input into its :math:`k \times k` patches (``F.unfold``), gating each channel's
    patch and multiplying by the filter. That costs the memory of the unfolded input,
    :math:`k^2` times the input's; it is the method's nature, not an artefact.
    """

    def __init__(self, *args, pool_size: int = 9, **kwargs) -> None:
        super().__init__(*args, pool_size=pool_size, **kwargs)
        self.se_alpha = nn.Parameter(torch.zeros(self.in_channels, device=self.weight.device, dtype=self.weight.dtype))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        gate = torch.sigmoid(self.se_alpha.view(1, -1, 1, 1) * self.pooled(x))  # (N, C, Ho, Wo)
        ho, wo = gate.shape[-2:]
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode
                      if self.padding_mode != "zeros" else "constant")
            padding = 0
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=padding, stride=self.stride)
        kk = self.kernel_size[0] * self.kernel_size[1]
        cols = cols.view(n, c, kk, ho * wo) * gate.view(n, c, 1, ho * wo)
        g, d = self.groups, self.out_channels
        cols = cols.view(n, g, (c // g) * kk, ho * wo)
        weight = self.weight.view(g, d // g, (c // g) * kk)
        y = torch.einsum("gok,ngkl->ngol", weight, cols).reshape(n, d, ho, wo)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pool_size={self.pool_size}"


class MultiplicativeEnvelopeConv2d(ConvVariant):
    r"""The filter multiplied by a Gaussian window on its own support (eq. (10), "Mult.").

    .. math::

        \mathbf w(u,v,c,d) = \mathbf g(u,v;\sigma_c)\,\mathbf F(u,v,c,d), \qquad
        \mathbf g(u,v;\sigma) = \exp\!\Big(-\frac{u^2+v^2}{2\sigma^2}\Big),
        \quad \sigma_c^2 = \operatorname{softplus}(\tilde\sigma_c),

    with :math:`(u, v)` the tap offsets from the filter's centre and one :math:`\sigma_c`
    per input channel (:math:`C` extra parameters, raw value initialised to 0 as in the
    paper). The window is not normalised: its centre weight is 1, so
    :math:`\sigma \to \infty` gives back the plain filter and :math:`\sigma \to 0` keeps
    only the centre tap. Unlike the disentangled envelope, the window can never be
    larger than the filter: on a :math:`1 \times 1` convolution it is the constant 1 and
    the method changes nothing (and its sigma gets no gradient).
    """

    def __init__(self, *args, sigma_init: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.raw_sigma = nn.Parameter(torch.full((self.in_channels,), float(sigma_init), device=self.weight.device,
                                                 dtype=self.weight.dtype))
        # input channel seen by weight[d, j]: group (d // (D/G)) * (C/G) + j
        d, g = self.out_channels, self.groups
        index = (torch.arange(d)[:, None] // (d // g)) * (self.in_channels // g) + torch.arange(self.in_channels // g)
        self.register_buffer("_channel_index", index.to(self.weight.device), persistent=False)

    def window(self) -> torch.Tensor:
        r"""The windows :math:`\mathbf g(u, v; \sigma_c)`, shape :math:`(C, k_h, k_w)`."""
        sigma2 = EF.sigma2_from_raw(self.raw_sigma)
        kh, kw = self.kernel_size
        u = torch.arange(kh, device=sigma2.device, dtype=sigma2.dtype) - (kh - 1) / 2
        v = torch.arange(kw, device=sigma2.device, dtype=sigma2.dtype) - (kw - 1) / 2
        dist2 = u[:, None] ** 2 + v[None, :] ** 2
        return torch.exp(-dist2 / (2 * sigma2.view(-1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._conv_forward(x, self.weight * self.window()[self._channel_index], self.bias)
