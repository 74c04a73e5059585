r"""The Gaussian envelope as pure functions of tensors.

This module is the single place where the envelope's math lives (paper, Sec. 2.3):

.. math::

    \sigma_c^2 = \operatorname{softplus}(\tilde\sigma_c), \qquad
    \mathbf g_{\sigma_c}[x] = \operatorname{softmax}_x\!\Big(-\frac{x^2}{2\sigma_c^2}\Big),
    \quad x = -r, \dots, r, \quad k_g = 2r + 1,

    \bar X(\cdot, \cdot, c) = \mathbf g_{\sigma_c}(y) * \big(\mathbf g_{\sigma_c}(x) * X(\cdot, \cdot, c)\big).

The 2-D envelope is the outer product of the 1-D kernel with itself; with a sigma per axis
(``raw_sigma`` of shape :math:`(C, n)`), of the 1-D kernels of each axis's own sigma. This module holds the
math only: the kernel, its derivative (what eq. (8) filters with), the parameterisation and
argument checks. Applying the envelope to a tensor is the functional
:func:`envconv.functional.gaussian_envelope` over the operator of :mod:`envconv.ops`; the
independent reference it is tested against is ``tests/reference.py`` (scipy).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "MAX_SIZE",
    "axis_raw_sigmas",
    "central_mass",
    "PADDING_MODES",
    "MIN_SIGMA2",
    "check_envelope_size",
    "axis_sizes",
    "compact_size",
    "check_padding_mode",
    "check_padding_size",
    "check_envelope_args",
    "check_floating_point",
    "sigma2_from_raw",
    "raw_from_sigma",
    "gaussian_kernel1d",
    "gaussian_kernel1d_derivative",
    "gaussian_kernel1d_second_derivative",
]

#: Padding modes of the envelope; all keep the spatial size. ``"zeros"`` is what a
#: convolution does; the others follow :func:`torch.nn.functional.pad`.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

#: Lower bound on sigma^2 inside the kernel. At sigma^2 = 1e-4 the first off-centre
#: logit is -5000, so ``exp`` underflows to exactly 0 in every float dtype: the kernel
#: is the delta, as sigma = 0 must be. The bound keeps ``-x^2 / (2 sigma^2)`` and its
#: derivative finite (no 0/0 at x = 0, no inf * 0 in backward) and changes the kernel
#: by less than exp(-5000) relative to the unbounded formula.
MIN_SIGMA2 = 1e-4


#: The largest envelope size k_g taken; far above any feature map's side, and a kernel that still fits in memory.
MAX_SIZE = 1023


def check_envelope_size(size: int, name: str = "size") -> int:
    """Return ``size`` if it is a valid envelope size (odd int from 1 to :data:`MAX_SIZE`), else raise.

    Example:
        >>> check_envelope_size(9)
        9
        >>> check_envelope_size(4)
        Traceback (most recent call last):
            ...
        ValueError: size must be an odd positive int (k_g = 2r + 1), got 4
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{name} must be an odd positive int, got {type(size).__name__} {size!r}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"{name} must be an odd positive int (k_g = 2r + 1), got {size}")
    if size > MAX_SIZE:
        raise ValueError(f"{name} must be at most {MAX_SIZE}, got {size}")
    return size


def axis_sizes(size: Union[int, Sequence[int]], spatial_dims: int, name: str = "size") -> Tuple[int, ...]:
    """The envelope size :math:`k_g` along each spatial axis: an int for every axis, or one per axis.

    Example:
        >>> axis_sizes(9, 3), axis_sizes((3, 9, 9), 3)
        ((9, 9, 9), (3, 9, 9))
        >>> axis_sizes((3, 9), 3)
        Traceback (most recent call last):
            ...
        ValueError: size must be an odd positive int or 3 of them (one per spatial axis), got (3, 9)
    """
    if isinstance(size, (list, tuple)):
        if len(size) != spatial_dims:
            raise ValueError(f"{name} must be an odd positive int or {spatial_dims} of them (one per spatial axis), "
                             f"got {tuple(size)}")
        return tuple(check_envelope_size(s, name) for s in size)
    return (check_envelope_size(size, name),) * spatial_dims


def compact_size(sizes: Sequence[int]) -> Union[int, Tuple[int, ...]]:
    """Per-axis sizes as the envelope reports them: one int when every axis has it, else the tuple.

    Example:
        >>> compact_size((9, 9)), compact_size((3, 9, 9))
        (9, (3, 9, 9))
    """
    sizes = tuple(int(s) for s in sizes)
    return sizes[0] if len(set(sizes)) == 1 else sizes


def check_padding_mode(padding_mode: str, name: str = "padding_mode") -> str:
    """Return ``padding_mode`` if it is one of :data:`PADDING_MODES`, else raise.

    Example:
        >>> check_padding_mode("reflect")
        'reflect'
        >>> check_padding_mode("same")
        Traceback (most recent call last):
            ...
        ValueError: padding_mode must be one of ('zeros', 'reflect', 'replicate', 'circular'), got 'same'
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{name} must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


def sigma2_from_raw(raw_sigma: torch.Tensor) -> torch.Tensor:
    r"""Map the raw parameter to the variance: :math:`\sigma^2 = \log(1 + e^{\tilde\sigma})`.

    Example:
        >>> sigma2_from_raw(torch.zeros(1))  # raw sigma 0: sigma^2 = log 2
        tensor([0.6931])
    """
    return F.softplus(raw_sigma)


def raw_from_sigma(sigma: Union[float, Sequence[float], torch.Tensor]) -> torch.Tensor:
    r"""Inverse of :func:`sigma2_from_raw` applied to ``sigma**2``, in float64.

    :math:`\tilde\sigma = \log(e^{\sigma^2} - 1)`; ``sigma = 0`` maps to ``-inf``,
    which :func:`gaussian_kernel1d` turns into the delta kernel.

    Raises:
        ValueError: if any sigma is negative or not finite.

    Example:
        >>> raw_from_sigma([0.0, 1.0])
        tensor([  -inf, 0.5413], dtype=torch.float64)
        >>> sigma2_from_raw(raw_from_sigma([1.0]))
        tensor([1.], dtype=torch.float64)
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


def axis_raw_sigmas(raw_sigma: torch.Tensor, spatial_dims: int) -> List[torch.Tensor]:
    r"""The raw sigma of each spatial axis, each of shape :math:`(C,)` or :math:`(1,)`.

    A ``raw_sigma`` of shape :math:`(C,)` or :math:`(1,)` scales every axis (the paper's
    envelope); one of shape :math:`(C, n)` or :math:`(1, n)` has a column per spatial axis, in
    the order of the input's axes (in 3-D: depth or time, height, width).

    Example:
        >>> [tuple(r.shape) for r in axis_raw_sigmas(torch.zeros(4, 3), 3)]
        [(4,), (4,), (4,)]
    """
    if raw_sigma.dim() == 1:
        return [raw_sigma] * spatial_dims
    if raw_sigma.dim() != 2 or raw_sigma.shape[1] != spatial_dims:
        raise ValueError(f"a per-axis raw_sigma must have shape (C, {spatial_dims}) or (1, {spatial_dims}), "
                         f"got {tuple(raw_sigma.shape)}")
    return [raw_sigma[:, a] for a in range(spatial_dims)]


def central_mass(raw_sigma: torch.Tensor, size: Union[int, Sequence[int]], taps: Union[int, Sequence[int]],
                 spatial_dims: int = 2) -> torch.Tensor:
    r"""Per channel, the share of the ``size`` x ``size`` envelope's mass inside its central ``taps`` x ``taps``.

    The separable 2-D envelope's central part holds :math:`m^2`, :math:`m` the sum of the
    central ``taps`` entries of :func:`gaussian_kernel1d` (in 1-D :math:`m`, in 3-D :math:`m^3`;
    with a sigma or a size per axis the product of each axis's :math:`m`).
    ``1 - central_mass`` is what shrinking the envelope to ``taps`` at inference (Table 1e) leaves out.

    Args:
        raw_sigma: raw parameters :math:`\tilde\sigma`, shape :math:`(C,)` (or :math:`(C, n)`,
            one per axis).
        size: the envelope's size :math:`k_g` (or one per spatial axis).
        taps: the central size kept (odd; capped at ``size``), or one per spatial axis.
        spatial_dims: the envelope's number of spatial axes.

    Returns:
        Tensor of shape :math:`(C,)`.

    Example:
        >>> round(float(central_mass(torch.zeros(1, dtype=torch.float64), 9, 3)), 3)  # sigma 0.83: 3 taps keep 89%
        0.893
    """
    sizes, kept = axis_sizes(size, spatial_dims), axis_sizes(taps, spatial_dims, "taps")
    masses = []
    for raw, k, t in zip(axis_raw_sigmas(raw_sigma, spatial_dims), sizes, kept):
        r, h = k // 2, min(t, k) // 2
        masses.append(gaussian_kernel1d(raw, k)[:, r - h : r + h + 1].sum(dim=1))
    return torch.stack(masses).prod(0)


def gaussian_kernel1d_derivative(raw_sigma: torch.Tensor, size: int) -> torch.Tensor:
    r"""Derivative of :func:`gaussian_kernel1d` w.r.t. each channel's own raw sigma, shape :math:`(C, k_g)`.

    .. math::

        \frac{\partial \mathbf g[c, x]}{\partial \tilde\sigma_c}
        = \mathbf g[c, x]\,\frac{x^2 - \sum_\xi \mathbf g[c, \xi]\,\xi^2}{2\sigma_c^4}\,
          \operatorname{sigmoid}(\tilde\sigma_c)

    (zero where :math:`\sigma_c^2` sits at its lower bound), the :math:`\partial \mathbf g /
    \partial \sigma_c` that eq. (8) filters the input with.

    Example:
        >>> d = gaussian_kernel1d_derivative(torch.zeros(2, dtype=torch.float64), 5)
        >>> d.shape, bool(torch.allclose(d.sum(1), torch.zeros(2, dtype=torch.float64)))  # the taps keep summing to 1
        (torch.Size([2, 5]), True)
    """
    r = size // 2
    x2 = torch.arange(-r, r + 1, device=raw_sigma.device, dtype=raw_sigma.dtype).square()
    unclamped = sigma2_from_raw(raw_sigma)
    sigma2 = unclamped.clamp_min(MIN_SIGMA2)
    g = torch.softmax(-x2 / (2.0 * sigma2[:, None]), dim=1)
    dsigma2 = torch.sigmoid(raw_sigma) * (unclamped >= MIN_SIGMA2)
    return g * (x2 - (g * x2).sum(1, keepdim=True)) / (2.0 * sigma2[:, None] ** 2) * dsigma2[:, None]


def gaussian_kernel1d_second_derivative(raw_sigma: torch.Tensor, size: int) -> torch.Tensor:
    r"""Second derivative of :func:`gaussian_kernel1d` w.r.t. each channel's own raw sigma, shape :math:`(C, k_g)`.

    With :math:`s = \sigma_c^2`, :math:`h_x = (x^2 - \sum_\xi \mathbf g[c, \xi]\,\xi^2)/2` and
    :math:`V = \sum_x \mathbf g[c, x]\,h_x^2`,

    .. math::

        \frac{\partial^2 \mathbf g}{\partial s^2} = \mathbf g\,\frac{h^2 - V}{s^4} - 2\,\mathbf g\,\frac{h}{s^3},
        \qquad
        \frac{\partial^2 \mathbf g}{\partial \tilde\sigma_c^2} = \frac{\partial^2 \mathbf g}{\partial s^2}\,
        s'^2 + \frac{\partial \mathbf g}{\partial s}\, s'', \quad s' = \operatorname{sigmoid}(\tilde\sigma_c),\
        s'' = s'(1 - s')

    (zero where :math:`\sigma_c^2` sits at its lower bound): what double backward and
    forward-over-reverse differentiation of the envelope need.

    Example:
        >>> d2 = gaussian_kernel1d_second_derivative(torch.zeros(2, dtype=torch.float64), 5)
        >>> bool(torch.allclose(d2.sum(1), torch.zeros(2, dtype=torch.float64)))  # the taps keep summing to 1
        True
    """
    r = size // 2
    x2 = torch.arange(-r, r + 1, device=raw_sigma.device, dtype=raw_sigma.dtype).square()
    unclamped = sigma2_from_raw(raw_sigma)
    s = unclamped.clamp_min(MIN_SIGMA2)[:, None]
    g = torch.softmax(-x2 / (2.0 * s), dim=1)
    h = (x2 - (g * x2).sum(1, keepdim=True)) / 2.0
    variance = (g * h.square()).sum(1, keepdim=True)
    d_s = g * h / s ** 2
    d2_s = g * (h.square() - variance) / s ** 4 - 2.0 * g * h / s ** 3
    ds = (torch.sigmoid(raw_sigma) * (unclamped >= MIN_SIGMA2))[:, None]
    return d2_s * ds.square() + d_s * ds * (1.0 - torch.sigmoid(raw_sigma))[:, None]


def check_floating_point(x: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``x`` is floating point: an integer kernel would round every tap of eq. (9) to 0.

    Example:
        >>> check_floating_point(torch.zeros(2, dtype=torch.uint8))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        TypeError: x must be a floating-point tensor, got torch.uint8 (the envelope computes in floating point; ...
    """
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype} (the envelope computes in floating point; "
                        f"convert it first, e.g. x.float())")


def check_envelope_args(x: torch.Tensor, raw_sigma: torch.Tensor, size: Union[int, Sequence[int]],
                        padding_mode: str) -> None:
    """Check an envelope's arguments: ``x`` (N, C, ...) with 1-3 spatial axes, ``raw_sigma`` (C,) or (1,).

    A sigma per axis: ``raw_sigma`` (C, n) or (1, n), n the number of spatial axes.

    Both must be floating point (``TypeError`` otherwise): the kernel of eq. (9) has no integer form.

    Example:
        >>> check_envelope_args(torch.zeros(1, 4, 8, 8), torch.zeros(3), 9, "zeros")
        Traceback (most recent call last):
            ...
        ValueError: raw_sigma must have shape (4,) or (1,) for x with 4 channels, got (3,)
    """
    check_floating_point(x)
    if not raw_sigma.is_floating_point():
        raise TypeError(f"raw_sigma must be a floating-point tensor, got {raw_sigma.dtype}")
    check_padding_mode(padding_mode)
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"x must have shape (N, C, H, W), or (N, C, L) / (N, C, D, H, W) for 1-D / 3-D envelopes, "
                         f"got {x.dim()} dims {tuple(x.shape)}")
    channels, dims = x.shape[1], x.dim() - 2
    axis_sizes(size, dims)
    if raw_sigma.dim() == 2:
        if raw_sigma.shape[0] not in (1, channels) or raw_sigma.shape[1] != dims:
            raise ValueError(f"a per-axis raw_sigma must have shape ({channels}, {dims}) or (1, {dims}) for x with "
                             f"{channels} channels and {dims} spatial axes, got {tuple(raw_sigma.shape)}")
    elif raw_sigma.dim() != 1:
        raise ValueError(f"raw_sigma must have shape (C,) or (1,) (or (C, {dims}) for a sigma per axis), "
                         f"got {tuple(raw_sigma.shape)}")
    elif raw_sigma.shape[0] not in (1, channels):
        raise ValueError(
            f"raw_sigma must have shape ({channels},) or (1,) for x with {channels} channels, "
            f"got ({raw_sigma.shape[0]},)"
        )
    check_padding_size(x, size, padding_mode)


def check_padding_size(x: torch.Tensor, size: Union[int, Sequence[int]], padding_mode: str) -> None:
    """F.pad's limits: reflect needs r < H, W; circular needs r <= H, W (``size`` an int or one per axis).

    Example:
        >>> check_padding_size(torch.zeros(1, 1, 3, 3), 9, "reflect")
        Traceback (most recent call last):
            ...
        ValueError: padding_mode='reflect' needs height and width > r = 4 (size 9), got (3, 3)
    """
    sizes = axis_sizes(size, x.dim() - 2)
    too_small = {"reflect": lambda n, r: n <= r, "circular": lambda n, r: n < r}.get(padding_mode)
    if too_small is None or not any(too_small(n, k // 2) for n, k in zip(x.shape[2:], sizes)):
        return
    relation = ">" if padding_mode == "reflect" else ">="
    if len(set(sizes)) == 1:
        axes = "height and width" if x.dim() == 4 else "every spatial size"
        raise ValueError(f"padding_mode={padding_mode!r} needs {axes} {relation} r = {sizes[0] // 2} "
                         f"(size {sizes[0]}), got {tuple(x.shape[2:])}")
    raise ValueError(f"padding_mode={padding_mode!r} needs each spatial size {relation} its r = "
                     f"{tuple(k // 2 for k in sizes)} (sizes {sizes}), got {tuple(x.shape[2:])}")
