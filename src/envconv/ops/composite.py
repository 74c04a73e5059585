"""The envelope from ATen ops: runs on every device and dtype, in every padding mode.

Forward: a depth-wise 1-D convolution per spatial axis (``"separable"``; 1-D, 2-D and 3-D
inputs), or, in 2-D, one depth-wise ``k x k`` convolution with the outer-product kernel
(``"full"``, faster for 3 taps and small maps on CPU), evaluated only at the strided output
positions. Backward: the input gradient by the transposed passes (eq. (7)), and the sigma
gradient by eq. (8): one derivative-of-Gaussian filtering per axis and a dot product with the
output gradient - no depth-wise weight gradient is ever formed.

Contiguous inputs with few channels are filtered with the batch folded into the channels, a free
view: oneDNN's grouped convolution is 4-5x faster with N*C groups than with C. The fold
lives inside the op, so traced graphs never see the batch size.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["forward", "backward", "pass1d", "pass1d_adjoint", "axes", "per_axis", "pass_inputs", "derivative_passes"]

#: NCHW inputs with fewer channels than this are filtered with the batch folded into the channels.
FOLD_CHANNELS = 8


CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}
_CONV_T = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}
_PAD_BACKWARD = {("reflect", 3): "reflection_pad1d_backward", ("reflect", 4): "reflection_pad2d_backward",
                 ("reflect", 5): "reflection_pad3d_backward", ("replicate", 3): "replication_pad1d_backward",
                 ("replicate", 4): "replication_pad2d_backward", ("replicate", 5): "replication_pad3d_backward"}


def _weight(kernel: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """The depth-wise weight (C, 1, 1.., k, ..1) of a pass along tensor axis ``dim`` of an ``ndim``-D input."""
    channels, size = kernel.shape
    shape = [channels, 1] + [size if axis == dim else 1 for axis in range(2, ndim)]
    return kernel.view(shape)


def _along(dim: int, ndim: int, value: int, other: int) -> tuple:
    """A per-spatial-axis tuple: ``value`` on axis ``dim``, ``other`` on the rest."""
    return tuple(value if axis == dim else other for axis in range(2, ndim))


def _pad(r: int, dim: int, ndim: int) -> tuple:
    """``F.pad``'s argument padding axis ``dim`` by ``r`` on both sides (F.pad lists the last axis first)."""
    pad = []
    for axis in range(ndim - 1, 1, -1):
        pad += [r, r] if axis == dim else [0, 0]
    return tuple(pad)


def _as_4d(x: torch.Tensor, kernel: torch.Tensor, dim: int):
    """A contiguous (N, C, D, H, W) pass as a 2-D one: ``(x viewed 4-D, its kernel, its axis, back)``.

    ``back`` views the 2-D pass's output as the 5-D one.

    oneDNN's depth-wise 2-D convolutions run 1.4-1.8x faster than its 3-D ones on the same
    data (2 cores): the width pass views (N, C, D*H, W), the depth pass (N, C, D, H*W), the
    height pass (N, C*D, H, W) with each channel's kernel repeated D times.
    """
    n, c, d, h, w = x.shape
    if dim == 4:
        return x.view(n, c, d * h, w), kernel, 3, lambda y: y.view(n, c, d, h, y.shape[3])
    if dim == 2:
        return x.view(n, c, d, h * w), kernel, 2, lambda y: y.view(n, c, y.shape[2], h, w)
    return x.view(n, c * d, h, w), kernel.repeat_interleave(d, 0), 2, lambda y: y.view(n, c, d, y.shape[2], w)


def pass1d(x: torch.Tensor, kernel: torch.Tensor, dim: int, padding_mode: str, stride: int = 1) -> torch.Tensor:
    """One depth-wise 1-D pass of ``kernel`` (C, k) along tensor axis ``dim`` (2, 3 or 4), output every ``stride``.

    ``x`` is (N, C, L), (N, C, H, W) or (N, C, D, H, W); on 4-D input ``dim`` 2 is the height, 3 the width.
    """
    # not while tracing: the height pass's repeated kernel would take the traced depth (an ONNX kernel of unknown shape)
    if x.dim() == 5 and x.is_contiguous() and x.numel() > 0 and not torch.jit.is_tracing():
        x4, k4, d4, back = _as_4d(x, kernel, dim)
        return back(pass1d(x4, k4, d4, padding_mode, stride))
    ndim = x.dim()
    channels, size = kernel.shape
    r = size // 2
    conv, weight, conv_stride = CONV[ndim], _weight(kernel, dim, ndim), _along(dim, ndim, stride, 1)
    if padding_mode == "zeros":
        return conv(x, weight, stride=conv_stride, padding=_along(dim, ndim, r, 0), groups=channels)
    return conv(F.pad(x, _pad(r, dim, ndim), mode=padding_mode), weight, stride=conv_stride, groups=channels)


def _pad_adjoint(grad: torch.Tensor, x: torch.Tensor, r: int, dim: int, padding_mode: str) -> torch.Tensor:
    """The adjoint of ``F.pad(x, r on both sides of dim, mode)``: padded gradient -> gradient of ``x``."""
    if padding_mode in ("reflect", "replicate"):
        backward = getattr(torch.ops.aten, _PAD_BACKWARD[padding_mode, x.dim()])
        return backward(grad, x, list(_pad(r, dim, x.dim())))
    n = x.shape[dim]  # circular: the left pad is x[n-r:], the right pad x[:r]
    out = grad.narrow(dim, r, n).clone()
    if r:
        out.narrow(dim, 0, r).add_(grad.narrow(dim, n + r, r))
        out.narrow(dim, n - r, r).add_(grad.narrow(dim, 0, r))
    return out


def pass1d_adjoint(grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, dim: int, padding_mode: str,
                   stride: int = 1) -> torch.Tensor:
    """The adjoint of :func:`pass1d` applied to ``grad``: the gradient of its input ``x`` (only its shape is read)."""
    if grad.dim() == 5 and grad.is_contiguous() and x.is_contiguous() and grad.numel() > 0:
        g4, k4, d4, _ = _as_4d(grad, kernel, dim)
        x4, _, _, back = _as_4d(x, kernel, dim)
        return back(pass1d_adjoint(g4, x4, k4, d4, padding_mode, stride))
    ndim = x.dim()
    channels, size = kernel.shape
    r = size // 2
    extra = x.shape[dim] - 1 - (grad.shape[dim] - 1) * stride  # output_padding: restores n from ceil(n / stride)
    conv_t, weight = _CONV_T[ndim], _weight(kernel, dim, ndim)
    conv_stride, out_pad = _along(dim, ndim, stride, 1), _along(dim, ndim, extra, 0)
    if padding_mode == "zeros":
        return conv_t(grad, weight, stride=conv_stride, padding=_along(dim, ndim, r, 0), output_padding=out_pad,
                      groups=channels)
    padded = conv_t(grad, weight, stride=conv_stride, output_padding=out_pad, groups=channels)
    return _pad_adjoint(padded, x, r, dim, padding_mode)


def axes(x: torch.Tensor) -> List[int]:
    """The spatial axes of ``x`` in the order the separable passes run: the last (the width) first."""
    return list(range(x.dim() - 1, 1, -1))


def per_axis(kernel, ndim: int) -> List[torch.Tensor]:
    """The 1-D kernels (C, k) of each spatial axis: ``kernel`` itself on every axis, or its entries (one per axis)."""
    return [kernel] * ndim if isinstance(kernel, torch.Tensor) else list(kernel)


def _fold(x: torch.Tensor, kernels: List[torch.Tensor]) -> Optional[Tuple[torch.Tensor, List[torch.Tensor]]]:
    """``(x as (1, N*C, ...), each kernel repeated N times)`` for few-channel contiguous input, else ``None``."""
    n, channels = x.shape[:2]
    if channels < FOLD_CHANNELS and n > 1 and x.is_contiguous():
        return x.view(1, n * channels, *x.shape[2:]), [k.repeat(n, 1) for k in kernels]
    return None


def forward(x: torch.Tensor, kernel, stride: Sequence[int], padding_mode: str,
            variant: str = "separable") -> torch.Tensor:
    """The envelope of ``x`` (N, C, *spatial) with 1-D kernels (C, k) in ``x``'s dtype and memory format.

    ``kernel``: one (C, k) tensor for every axis, or a sequence of them, one per spatial axis
    (a sigma or a size per axis). ``stride`` has one entry per spatial axis. ``variant``:
    ``"separable"`` (a 1-D pass per axis) or, for 2-D input, ``"full"`` (one ``k x k`` depth-wise conv).
    """
    kernels = per_axis(kernel, x.dim() - 2)
    folded = _fold(x, kernels)
    if folded is not None:
        out = forward(*folded, stride, padding_mode, variant)
        return out.view(x.shape[0], x.shape[1], *out.shape[2:])
    if variant == "full":
        channels = kernels[0].shape[0]
        rh, rw = kernels[0].shape[1] // 2, kernels[1].shape[1] // 2
        weight = (kernels[0][:, :, None] * kernels[1][:, None, :]).unsqueeze(1)
        if padding_mode == "zeros":
            return F.conv2d(x, weight, stride=tuple(stride), padding=(rh, rw), groups=channels)
        return F.conv2d(F.pad(x, (rw, rw, rh, rh), mode=padding_mode), weight, stride=tuple(stride), groups=channels)
    for dim in axes(x):
        x = pass1d(x, kernels[dim - 2], dim, padding_mode, stride[dim - 2])
    return x


def backward(grad: torch.Tensor, x: torch.Tensor, kernel, dkernel, stride: Sequence[int], padding_mode: str,
             need_x: bool, need_sigma: bool,
             sigma_per_axis: bool = False) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    r"""``(grad_x, sigma gradient per channel (C,))`` of the envelope, each ``None`` when not needed.

    ``kernel`` / ``dkernel``: the kernels :math:`\mathbf g` and :math:`\partial \mathbf g /
    \partial\tilde\sigma` (C, k), one for all axes or one per spatial axis (as in :func:`forward`);
    with ``sigma_per_axis`` the sigma gradient has a column per spatial axis, (C, n). Eq. (7):
    :math:`\partial L/\partial X = P_1^\top \cdots P_n^\top(\partial L/\partial Y)`, the passes' adjoints
    in reverse; eq. (8) for the separable kernel: :math:`\partial L/\partial\tilde\sigma_{c,a} = \sum
    \partial L/\partial Y \cdot P_n \cdots P_1(X)` with :math:`g'` in the pass along axis
    :math:`a` and :math:`g` in the others, summed over the axes for one sigma per channel
    (in 2-D: :math:`P_h(P_w(X, g'), g) + P_h(P_w(X, g), g')`), each sum over one channel.
    """
    ndim = x.dim() - 2
    kernels, dkernels = per_axis(kernel, ndim), per_axis(dkernel, ndim)
    folded = _fold(x, kernels)
    if folded is not None:
        n, c = x.shape[:2]
        flat_x, flat_k = folded
        gx, gs = backward(grad.contiguous().view(1, n * c, *grad.shape[2:]), flat_x, flat_k,
                          [d.repeat(n, 1) for d in dkernels], stride, padding_mode, need_x, need_sigma,
                          sigma_per_axis)
        return (gx.view(x.shape) if gx is not None else None), \
            (gs.view(n, c, *gs.shape[1:]).sum(0) if gs is not None else None)
    grad = grad.to(x.dtype)
    dkernels = [d.to(x.dtype) for d in dkernels]
    order = axes(x)
    inputs = pass_inputs(x, kernels, stride, padding_mode)
    grad_x = grad_sigma = None
    if need_x:
        grad_x = grad
        for dim, source in zip(reversed(order), reversed(inputs)):
            grad_x = pass1d_adjoint(grad_x, source, kernels[dim - 2], dim, padding_mode, stride[dim - 2])
    if need_sigma:
        grad_sigma = _sigma_gradient(grad, x, inputs, kernels, dkernels, stride, padding_mode, sigma_per_axis)
    return grad_x, grad_sigma


def derivative_passes(x: torch.Tensor, inputs: List[torch.Tensor], kernels, dkernels, stride: Sequence[int],
                      padding_mode: str, sigma_per_axis: bool) -> List[torch.Tensor]:
    """The envelope's sigma derivatives of ``x``: all passes, with :math:`g'` in the pass along one axis.

    One tensor per spatial axis (first axis first) with ``sigma_per_axis``, else one, their sum.
    ``inputs``: the input of each pass (``inputs[0]`` is ``x``), as :func:`backward` keeps them.
    """
    channels, order = x.shape[1], axes(x)
    # derivs: the passes so far with g' in exactly one of them (one tensor per axis done, or their sum
    # for one sigma per channel); inputs[i + 1]: the passes so far with g in all
    derivs = [pass1d(x, dkernels[order[0] - 2], order[0], padding_mode, stride[order[0] - 2])]
    for i, dim in enumerate(order[1:]):  # one call for all terms: P(deriv, g) for each, and P(smoothed, g')
        a, k = dim - 2, len(derivs)
        both = pass1d(torch.cat([*derivs, inputs[i + 1]], 1), torch.cat([kernels[a]] * k + [dkernels[a]], 0), dim,
                      padding_mode, stride[a])
        derivs = list(both.split(channels, 1))
        if not sigma_per_axis:
            derivs = [sum(derivs[1:], derivs[0])]
    return derivs[::-1]  # they ran from the last axis to the first


def pass_inputs(x: torch.Tensor, kernels, stride: Sequence[int], padding_mode: str) -> List[torch.Tensor]:
    """The input of each separable pass (the forward's intermediates): ``[x, P_n(x), P_{n-1}(P_n(x)), ...]``."""
    inputs = [x]
    for dim in axes(x)[:-1]:
        inputs.append(pass1d(inputs[-1], kernels[dim - 2], dim, padding_mode, stride[dim - 2]))
    return inputs


def _sigma_gradient(grad, x, inputs, kernels, dkernels, stride, padding_mode, sigma_per_axis):
    """Eq. (8): the output gradient dotted with the envelope's sigma derivatives, per channel (and axis)."""
    derivs = derivative_passes(x, inputs, kernels, dkernels, stride, padding_mode, sigma_per_axis)
    reduce, acc = [0, *range(2, x.dim())], torch.float64 if x.dtype == torch.float64 else torch.float32
    sums = [(grad.to(d.dtype) * d).sum(reduce, dtype=acc) for d in derivs]
    if not sigma_per_axis:
        return sums[0]
    return torch.stack(sums, 1)
