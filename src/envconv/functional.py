r"""The Gaussian envelope as pure functions of tensors.

This module is the single place where the envelope's math lives (paper, Sec. 2.3):

.. math::

    \sigma_c^2 = \operatorname{softplus}(\tilde\sigma_c), \qquad
    \mathbf g_{\sigma_c}[x] = \operatorname{softmax}_x\!\Big(-\frac{x^2}{2\sigma_c^2}\Big),
    \quad x = -r, \dots, r, \quad k_g = 2r + 1,

    \bar X(\cdot, \cdot, c) = \mathbf g_{\sigma_c}(y) * \big(\mathbf g_{\sigma_c}(x) * X(\cdot, \cdot, c)\big).

The 2-D envelope is the outer product of the 1-D kernel with itself.
:func:`gaussian_envelope_reference` applies it the plain way, as two depthwise 1-D
passes (width, then height); :func:`gaussian_envelope` computes the same thing by
whichever implementation is fastest for the case (:func:`choose_impl`), and can
evaluate it only at strided positions. Gradients come from autograd through the
softmax kernel; ``tests/test_functional.py`` checks them against the paper's
eq. (7)-(8) and every implementation against the reference.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "PADDING_MODES",
    "MIN_SIGMA2",
    "check_envelope_size",
    "check_padding_mode",
    "check_padding_size",
    "sigma2_from_raw",
    "raw_from_sigma",
    "gaussian_kernel1d",
    "gaussian_kernel1d_derivative",
    "gaussian_envelope",
    "gaussian_envelope_reference",
    "channel_kernel",
    "apply_envelope",
    "choose_impl",
    "IMPLS",
]

#: Implementations: two depthwise 1-D passes, one depthwise ``k x k`` conv with the
#: outer-product kernel, or the fused C++ kernel of :mod:`envconv.cpu_kernels`
#: (channels_last CPU, zero padding; only through :func:`gaussian_envelope`, which has sigma).
IMPLS = ("auto", "separable", "full", "fused")

#: Padding modes of the envelope; all keep the spatial size. ``"zeros"`` is what a
#: convolution does; the others follow :func:`torch.nn.functional.pad`.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

#: Lower bound on sigma^2 inside the kernel. At sigma^2 = 1e-4 the first off-centre
#: logit is -5000, so ``exp`` underflows to exactly 0 in every float dtype: the kernel
#: is the delta, as sigma = 0 must be. The bound keeps ``-x^2 / (2 sigma^2)`` and its
#: derivative finite (no 0/0 at x = 0, no inf * 0 in backward) and changes the kernel
#: by less than exp(-5000) relative to the unbounded formula.
MIN_SIGMA2 = 1e-4


def check_envelope_size(size: int, name: str = "size") -> int:
    """Return ``size`` if it is a valid envelope size (odd int >= 1), else raise."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{name} must be an odd positive int, got {type(size).__name__} {size!r}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"{name} must be an odd positive int (k_g = 2r + 1), got {size}")
    return size


def check_padding_mode(padding_mode: str, name: str = "padding_mode") -> str:
    """Return ``padding_mode`` if it is one of :data:`PADDING_MODES`, else raise."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{name} must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


def sigma2_from_raw(raw_sigma: torch.Tensor) -> torch.Tensor:
    r"""Map the raw parameter to the variance: :math:`\sigma^2 = \log(1 + e^{\tilde\sigma})`."""
    return F.softplus(raw_sigma)


def raw_from_sigma(sigma: Union[float, Sequence[float], torch.Tensor]) -> torch.Tensor:
    r"""Inverse of :func:`sigma2_from_raw` applied to ``sigma**2``, in float64.

    :math:`\tilde\sigma = \log(e^{\sigma^2} - 1)`; ``sigma = 0`` maps to ``-inf``,
    which :func:`gaussian_kernel1d` turns into the delta kernel.

    Raises:
        ValueError: if any sigma is negative or not finite.
    """
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    s2 = s * s
    # log(expm1(s2)) overflows for large s2, where it equals s2 + log1p(-exp(-s2)).
    return torch.where(s2 > 30, s2 + torch.log1p(-torch.exp(-s2)), torch.log(torch.expm1(s2)))


def gaussian_kernel1d(raw_sigma: torch.Tensor, size: int) -> torch.Tensor:
    r"""Discrete 1-D Gaussian envelope of eq. (9), one row per entry of ``raw_sigma``.

    .. math::

        \mathbf g[c, x] = \frac{\exp(-x^2 / 2\sigma_c^2)}{\sum_{\xi=-r}^{r}\exp(-\xi^2 / 2\sigma_c^2)},
        \qquad \sigma_c^2 = \operatorname{softplus}(\tilde\sigma_c).

    Each row sums to one. Very negative ``raw_sigma`` (sigma -> 0) gives the delta
    kernel, very large ``raw_sigma`` the uniform (box) kernel; neither produces NaN or
    Inf, in forward or backward.

    Args:
        raw_sigma: raw parameters :math:`\tilde\sigma`, shape :math:`(C,)`.
        size: kernel size :math:`k_g = 2r + 1`, odd and positive.

    Returns:
        Tensor of shape :math:`(C, k_g)`, dtype and device of ``raw_sigma``.

    Example:
        >>> k = gaussian_kernel1d(torch.zeros(2), 5)
        >>> k.shape, bool(torch.allclose(k.sum(1), torch.ones(2)))
        (torch.Size([2, 5]), True)
    """
    check_envelope_size(size)
    if raw_sigma.dim() != 1:
        raise ValueError(f"raw_sigma must have shape (C,), got {tuple(raw_sigma.shape)}")
    r = size // 2
    x2 = torch.arange(-r, r + 1, device=raw_sigma.device, dtype=raw_sigma.dtype).square()
    sigma2 = sigma2_from_raw(raw_sigma).clamp_min(MIN_SIGMA2)
    return torch.softmax(-x2 / (2.0 * sigma2[:, None]), dim=1)


def gaussian_kernel1d_derivative(raw_sigma: torch.Tensor, size: int) -> torch.Tensor:
    r"""Derivative of :func:`gaussian_kernel1d` w.r.t. each channel's own raw sigma, shape :math:`(C, k_g)`.

    .. math::

        \frac{\partial \mathbf g[c, x]}{\partial \tilde\sigma_c}
        = \mathbf g[c, x]\,\frac{x^2 - \sum_\xi \mathbf g[c, \xi]\,\xi^2}{2\sigma_c^4}\,
          \operatorname{sigmoid}(\tilde\sigma_c)

    (zero where :math:`\sigma_c^2` sits at its lower bound), the :math:`\partial \mathbf g /
    \partial \sigma_c` that eq. (8) filters the input with.
    """
    r = size // 2
    x2 = torch.arange(-r, r + 1, device=raw_sigma.device, dtype=raw_sigma.dtype).square()
    unclamped = sigma2_from_raw(raw_sigma)
    sigma2 = unclamped.clamp_min(MIN_SIGMA2)
    g = torch.softmax(-x2 / (2.0 * sigma2[:, None]), dim=1)
    dsigma2 = torch.sigmoid(raw_sigma) * (unclamped >= MIN_SIGMA2)
    return g * (x2 - (g * x2).sum(1, keepdim=True)) / (2.0 * sigma2[:, None] ** 2) * dsigma2[:, None]


def _pass(x: torch.Tensor, kernel: torch.Tensor, dim: int, padding_mode: str, stride: int = 1) -> torch.Tensor:
    """One depthwise 1-D pass of ``kernel`` (C, k) along ``dim`` (2: height, 3: width), output every ``stride``."""
    channels, size = kernel.shape
    r = size // 2
    if dim == 3:
        weight = kernel.view(channels, 1, 1, size)
        pad, conv_padding, conv_stride = (r, r, 0, 0), (0, r), (1, stride)
    else:
        weight = kernel.view(channels, 1, size, 1)
        pad, conv_padding, conv_stride = (0, 0, r, r), (r, 0), (stride, 1)
    if padding_mode == "zeros":
        return F.conv2d(x, weight, stride=conv_stride, padding=conv_padding, groups=channels)
    return F.conv2d(F.pad(x, pad, mode=padding_mode), weight, stride=conv_stride, groups=channels)


def _check_envelope_args(x: torch.Tensor, size: int, padding_mode: str, channels_of_param: int) -> None:
    check_envelope_size(size)
    check_padding_mode(padding_mode)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {x.dim()} dims {tuple(x.shape)}")
    channels = x.shape[1]
    if channels_of_param not in (1, channels):
        raise ValueError(
            f"raw_sigma must have shape ({channels},) or (1,) for x with {channels} channels, "
            f"got ({channels_of_param},)"
        )
    check_padding_size(x, size, padding_mode)


def check_padding_size(x: torch.Tensor, size: int, padding_mode: str) -> None:
    """F.pad's limits: reflect needs r < H, W; circular needs r <= H, W."""
    r = size // 2
    too_small = {"reflect": min(x.shape[2:]) <= r, "circular": min(x.shape[2:]) < r}
    if too_small.get(padding_mode, False):
        relation = ">" if padding_mode == "reflect" else ">="
        raise ValueError(
            f"padding_mode={padding_mode!r} needs height and width {relation} r = {r} (size {size}), "
            f"got {tuple(x.shape[2:])}"
        )


def channel_kernel(raw_sigma: torch.Tensor, size: int, x: torch.Tensor) -> torch.Tensor:
    """The (C, k) kernel of eq. (9) in ``x``'s dtype, one row per channel of ``x`` (a shared sigma repeated)."""
    kernel = gaussian_kernel1d(raw_sigma, size).to(x.dtype)
    if kernel.shape[0] != x.shape[1]:
        kernel = kernel.expand(x.shape[1], size).contiguous()
    return kernel


def _channel_kernel(x: torch.Tensor, raw_sigma: torch.Tensor, size: int, padding_mode: str) -> torch.Tensor:
    """Check the arguments; then :func:`channel_kernel`."""
    if raw_sigma.dim() != 1:
        raise ValueError(f"raw_sigma must have shape (C,) or (1,), got {tuple(raw_sigma.shape)}")
    _check_envelope_args(x, size, padding_mode, raw_sigma.shape[0])
    return channel_kernel(raw_sigma, size, x)


def gaussian_envelope_reference(
    x: torch.Tensor,
    raw_sigma: torch.Tensor,
    size: int,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """The plain implementation of :func:`gaussian_envelope` (two depthwise 1-D passes), kept for tests."""
    kernel = _channel_kernel(x, raw_sigma, size, padding_mode)
    return _pass(_pass(x, kernel, 3, padding_mode), kernel, 2, padding_mode)


def choose_impl(x: torch.Tensor, size: int, needs_grad: bool, padding_mode: str = "zeros",
                fused: bool = False) -> str:
    """The implementation used for ``impl="auto"``.

    Chosen from measurements on CPU (``benchmarks/layer_speed.py``; oneDNN kernels):

    * ``size <= 3``: ``"full"`` - one 3x3 depthwise conv beats two 1-D passes in
      forward and backward, in both memory layouts.
    * with ``fused=True`` (the caller has sigma, see :func:`gaussian_envelope`), a CPU
      tensor with zero padding, in channels_last or when a gradient is needed:
      ``"fused"`` - the C++ kernel with the eq. (8) backward. Its forward+backward took
      0.26x-0.84x the time of the 1-D passes at ResNet-50's seven places in channels_last,
      and 0.18x-0.88x in NCHW, whose input is converted to channels_last and back
      (``benchmarks/results/``).
    * inference (no gradient) on small maps (``H * W <= 28 * 28``): ``"full"``.
    * otherwise ``"separable"``.
    """
    if size <= 3:
        return "full"
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if fused and (channels_last or needs_grad):
        from . import cpu_kernels

        if cpu_kernels.supports(x, padding_mode) and cpu_kernels.available():
            return "fused"
    if not needs_grad and x.shape[2] * x.shape[3] <= 28 * 28:
        return "full"
    return "separable"


def apply_envelope(
    x: torch.Tensor,
    kernel: torch.Tensor,
    padding_mode: str = "zeros",
    stride: Union[int, Sequence[int]] = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Filter ``x`` (N, C, H, W) with the separable envelope of 1-D kernels ``kernel`` (C, k).

    The output is the envelope at positions ``(i * stride, j * stride)`` only (all
    positions for ``stride=1``): exactly what a strided 1x1 convolution after the
    envelope reads, at a fraction of the cost. ``impl`` picks the implementation
    (:data:`IMPLS`; ``"auto"``: :func:`choose_impl`); all give the same result up to
    float rounding. Works in the input's memory format (NCHW or channels_last).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "fused":
        raise ValueError("impl='fused' needs sigma, not a kernel: use gaussian_envelope")
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    channels, size = kernel.shape
    if size == 1:  # the 1-tap envelope is the identity, whatever sigma
        return x[..., ::sh, ::sw] if (sh, sw) != (1, 1) else x
    if impl == "auto":
        impl = choose_impl(x, size, torch.is_grad_enabled() and (x.requires_grad or kernel.requires_grad))
    n, _, h, w = x.shape
    if channels < 8 and n > 1 and x.is_contiguous():
        # Few channels in NCHW: fold the batch into the channels, (N, C, H, W) -> (1, N*C, H, W),
        # a free view. oneDNN's grouped conv is 4-5x faster with N*C groups than with C groups.
        out = apply_envelope(x.view(1, n * channels, h, w), kernel.repeat(n, 1), padding_mode, stride, impl)
        return out.view(n, channels, *out.shape[-2:])
    if impl == "full":
        r = size // 2
        weight = (kernel[:, :, None] * kernel[:, None, :]).unsqueeze(1)
        if padding_mode == "zeros":
            return F.conv2d(x, weight, stride=(sh, sw), padding=r, groups=channels)
        return F.conv2d(F.pad(x, (r, r, r, r), mode=padding_mode), weight, stride=(sh, sw), groups=channels)
    return _pass(_pass(x, kernel, 3, padding_mode, sw), kernel, 2, padding_mode, sh)


def gaussian_envelope(
    x: torch.Tensor,
    raw_sigma: torch.Tensor,
    size: int,
    padding_mode: str = "zeros",
    stride: Union[int, Sequence[int]] = 1,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Channel-wise Gaussian envelope filtering, eq. (3) with the kernel of eq. (9).

    Smooths each channel ``c`` of ``x`` with the separable Gaussian of scale
    :math:`\sigma_c`. The spatial size is kept (``stride=1``), or the result is read
    only every ``stride`` pixels, as a strided 1x1 convolution after it would.

    Args:
        x: input of shape :math:`(N, C, H, W)`, NCHW or channels_last.
        raw_sigma: raw scale :math:`\tilde\sigma`, shape :math:`(C,)`, or :math:`(1,)`
            for one sigma shared by all channels.
        size: envelope size :math:`k_g = 2r + 1` (odd, positive).
        padding_mode: one of :data:`PADDING_MODES`. ``"reflect"`` needs
            :math:`r < \min(H, W)`, ``"circular"`` :math:`r \le \min(H, W)`.
        stride: output every ``stride`` pixels (int or (sh, sw)).
        impl: ``"auto"`` (fastest known, :func:`choose_impl`), ``"separable"``, ``"full"``
            or ``"fused"``.

    Returns:
        Tensor of shape :math:`(N, C, \lceil H / s_h \rceil, \lceil W / s_w \rceil)`.

    Example:
        >>> x = torch.randn(2, 3, 16, 16)
        >>> gaussian_envelope(x, torch.zeros(3), 9).shape
        torch.Size([2, 3, 16, 16])
        >>> y = gaussian_envelope(x, torch.zeros(3), 9, stride=2)
        >>> bool(torch.allclose(y, gaussian_envelope(x, torch.zeros(3), 9)[..., ::2, ::2], atol=1e-6))
        True
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl in ("auto", "fused"):
        if raw_sigma.dim() != 1:
            raise ValueError(f"raw_sigma must have shape (C,) or (1,), got {tuple(raw_sigma.shape)}")
        _check_envelope_args(x, size, padding_mode, raw_sigma.shape[0])
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or raw_sigma.requires_grad)
        if impl == "fused" or choose_impl(x, size, needs_grad, padding_mode, fused=True) == "fused":
            from . import cpu_kernels

            return cpu_kernels.fused_envelope(x, raw_sigma, size, stride)
    kernel = _channel_kernel(x, raw_sigma, size, padding_mode)
    return apply_envelope(x, kernel, padding_mode, stride, impl)
