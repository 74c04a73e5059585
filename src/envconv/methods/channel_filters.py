r"""The channel-wise filters of the comparison methods: what replaces the Gaussian of eq. (9).

Each module maps :math:`(N, C, H, W) \to (N, C, H, W)` channel-wise (except the
adaptive attention, whose weights mix information across channels to *compute* the
map but still average each channel over its own neighbourhood) and is used as the
``envelope`` of an :class:`~envconv.conv.EnvelopeConv2d`, before the convolution.
All pad with zeros, like the Gaussian envelope and like a convolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels as EF

__all__ = [
    "DepthwiseEnvelope",
    "ParametricAttentionEnvelope",
    "AdaptiveAttentionEnvelope",
    "EnsembleEnvelope",
]


def _check_input(module: nn.Module, x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != module.channels:
        raise ValueError(
            f"{type(module).__name__} expects input (N, {module.channels}, H, W), got shape {tuple(x.shape)}"
        )


class DepthwiseEnvelope(nn.Module):
    r"""Free depth-wise :math:`1 \times k_g` then :math:`k_g \times 1` filters ("+DW", Sec. 2.4).

    .. math::

        \bar X(\cdot,\cdot,c) = \mathbf h_c(y) * \big(\mathbf v_c(x) * X(\cdot,\cdot,c)\big)

    with unconstrained :math:`\mathbf v_c, \mathbf h_c \in \mathbb R^{k_g}`, initialised to
    the Gaussian of eq. (9) at :math:`\tilde\sigma = 0`, so that training starts where the
    Gaussian envelope starts. Extra parameters: :math:`2 k_g C`.

    Example:
        >>> from envconv import GaussianEnvelope
        >>> env = DepthwiseEnvelope(4, size=5)
        >>> x = torch.randn(1, 4, 8, 8)
        >>> g = GaussianEnvelope(4, size=5)
        >>> bool(torch.allclose(env(x), g(x), atol=1e-6))
        True
    """

    def __init__(self, channels: int, size: int = 9, *, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = channels
        self.size = EF.check_envelope_size(size, "size")
        k = EF.gaussian_kernel1d(torch.zeros(channels, device=device, dtype=dtype), size)
        self.weight_x = nn.Parameter(k.clone())
        self.weight_y = nn.Parameter(k.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        c, k, r = self.channels, self.size, self.size // 2
        x = F.conv2d(x, self.weight_x.view(c, 1, 1, k), padding=(0, r), groups=c)
        return F.conv2d(x, self.weight_y.view(c, 1, k, 1), padding=(r, 0), groups=c)

    def extra_repr(self) -> str:
        return f"{self.channels}, size={self.size}"


def _gaussian_logits(size: int, device=None, dtype=None) -> torch.Tensor:
    r""":math:`-(x^2 + y^2) / 2\sigma^2` at :math:`\sigma^2 = \operatorname{softplus}(0)`, shape (k, k)."""
    x = torch.arange(size, device=device, dtype=dtype or torch.get_default_dtype()) - size // 2
    return -(x[:, None] ** 2 + x[None, :] ** 2) / (2 * torch.log(torch.tensor(2.0, dtype=x.dtype)))


class ParametricAttentionEnvelope(nn.Module):
    r"""A learned, position-independent attention map per channel (eq. (12), "Param.").

    .. math::

        \hat{\mathbf g}_c = \operatorname{softmax}(\mathbf G_c), \qquad
        \bar X(\cdot,\cdot,c) = \hat{\mathbf g}_c * X(\cdot,\cdot,c),

    with :math:`\mathbf G_c \in \mathbb R^{k_g \times k_g}` free, so that
    :math:`\hat{\mathbf g}_c \ge 0` sums to 1 (eq. (12)). :math:`\mathbf G_c` starts at
    :math:`-(x^2+y^2)/2\sigma^2` with :math:`\sigma^2 = \log 2`, whose softmax is exactly
    the Gaussian envelope at :math:`\tilde\sigma = 0`. Extra parameters: :math:`k_g^2 C`.
    """

    def __init__(self, channels: int, size: int = 9, *, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = channels
        self.size = EF.check_envelope_size(size, "size")
        self.logits = nn.Parameter(_gaussian_logits(size, device, dtype).expand(channels, size, size).clone())

    def kernel2d(self) -> torch.Tensor:
        r"""The attention maps :math:`\hat{\mathbf g}_c`, shape :math:`(C, k_g, k_g)`."""
        c, k = self.channels, self.size
        return self.logits.reshape(c, k * k).softmax(-1).view(c, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        return F.conv2d(x, self.kernel2d().unsqueeze(1), padding=self.size // 2, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, size={self.size}"


class AdaptiveAttentionEnvelope(nn.Module):
    r"""Input-dependent local attention (eqs. (13)-(14), "Adapt.").

    .. math::

        \bar X(x,y) = \sum_{(i,j)\in\mathcal N} G_{x,y}[i,j]\, X(x+i, y+j), \qquad
        G_{x,y} = \operatorname{softmax}_{(i,j)}\big(\mathbf w_c^\top X(x,y) + \mathbf w_n^\top X(x+i,y+j)\big),

    over the :math:`k_g \times k_g` neighbourhood :math:`\mathcal N`, with
    :math:`\mathbf w_c, \mathbf w_n \in \mathbb R^C` (extra parameters: :math:`2C`). One
    map per position is shared by all channels. Neighbours outside the image are left
    out of the softmax (the map is renormalised at the border).

    Two facts worth knowing, both consequences of eq. (14) as written:

    * :math:`\mathbf w_c^\top X(x,y)` is the same for every neighbour, so it cancels in
      the softmax: the output does not depend on :math:`\mathbf w_c` and its gradient is
      zero. It is kept so that the parameter count is the paper's.
    * Both start at 0, so the initial map is uniform (a :math:`k_g \times k_g` box filter).

    Cost: the map is built from :math:`k_g^2` shifted copies, :math:`O(k_g^2 CHW)` time;
    memory stays :math:`O(k_g^2 HW + CHW)` per image because the shifts are views. For
    large inputs a smaller ``size`` (3 or 5) keeps it affordable.
    """

    def __init__(self, channels: int, size: int = 9, *, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = channels
        self.size = EF.check_envelope_size(size, "size")
        self.w_center = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))
        self.w_neighbor = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The maps :math:`G_{x,y}`, shape :math:`(N, k_g^2, H, W)`, neighbours in row-major order."""
        _check_input(self, x)
        h, w, k, r = x.shape[-2], x.shape[-1], self.size, self.size // 2
        center = torch.einsum("c,nchw->nhw", self.w_center, x).unsqueeze(1)
        neighbor = F.pad(torch.einsum("c,nchw->nhw", self.w_neighbor, x).unsqueeze(1), (r, r, r, r))
        inside = F.pad(torch.ones(1, 1, h, w, device=x.device, dtype=torch.bool), (r, r, r, r))
        windows = [(slice(i, i + h), slice(j, j + w)) for i in range(k) for j in range(k)]
        logits = torch.cat(
            [(neighbor[..., hs, ws] + center).masked_fill(~inside[..., hs, ws], -torch.inf) for hs, ws in windows],
            dim=1,
        )
        return logits.softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attention(x)
        h, w, k, r = x.shape[-2], x.shape[-1], self.size, self.size // 2
        padded = F.pad(x, (r, r, r, r))
        out = torch.zeros_like(x)
        for n in range(k * k):
            i, j = divmod(n, k)
            out = out + attn[:, n : n + 1] * padded[..., i : i + h, j : j + w]
        return out

    def extra_repr(self) -> str:
        return f"{self.channels}, size={self.size}"


class EnsembleEnvelope(nn.Module):
    r"""Ensemble of :math:`m` fixed Gaussians combined through BatchNorm (eq. (11), Fig. 3, "Ens.").

    .. math::

        \bar X(\cdot,\cdot,c) = \sum_{i=1}^{m}
            \operatorname{BN}_{c,i}\big(\mathbf g(\cdot,\cdot;\hat\sigma_i) * X(\cdot,\cdot,c)\big)

    Each channel is smoothed by the :math:`m` fixed separable Gaussians of eq. (9) with
    scales :math:`\hat\sigma_i` (default 0, 0.5, 1, 1.5, 2: the identity up to a blur as
    wide as a 9-tap envelope carries); each response has its own BatchNorm
    (:math:`mC` channels), whose affine weights play the role of the :math:`\alpha_i`.
    The BatchNorm weights start at :math:`1/m`. Extra parameters: :math:`2mC` (plus
    :math:`2mC` running statistics).
    """

    def __init__(self, channels: int, size: int = 9, *, scales: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
                 device=None, dtype=None) -> None:
        super().__init__()
        self.channels = channels
        self.size = EF.check_envelope_size(size, "size")
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or any(s < 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of sigmas >= 0, got {scales!r}")
        m = len(self.scales)
        raw = EF.raw_from_sigma(self.scales).to(device=device, dtype=dtype or torch.get_default_dtype())
        kernels = EF.gaussian_kernel1d(raw, size)
        self.register_buffer("kernels", kernels.repeat(channels, 1), persistent=False)  # (C*m, k), channel-major
        self.bn = nn.BatchNorm2d(channels * m, device=device, dtype=dtype)
        nn.init.constant_(self.bn.weight, 1.0 / m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        c, m, k, r = self.channels, len(self.scales), self.size, self.size // 2
        y = F.conv2d(x, self.kernels.view(c * m, 1, 1, k), padding=(0, r), groups=c)
        y = F.conv2d(y, self.kernels.view(c * m, 1, k, 1), padding=(r, 0), groups=c * m)
        y = self.bn(y)
        return y.view(x.shape[0], c, m, *y.shape[-2:]).sum(2)

    def extra_repr(self) -> str:
        return f"{self.channels}, size={self.size}, scales={self.scales}"
