"""The envelope from ATen ops: runs on every device and dtype, in every padding mode.

Forward: two depth-wise 1-D convolutions (``"separable"``), or one depth-wise ``k x k``
convolution with the outer-product kernel (``"full"``, faster for 3 taps and small maps on
CPU), evaluated only at the strided output positions. Backward: the input gradient by the
transposed passes (eq. (7)), and the sigma gradient by eq. (8): one derivative-of-Gaussian
filtering per axis and a dot product with the output gradient - no depth-wise weight gradient
is ever formed.

NCHW inputs with few channels are filtered with the batch folded into the channels, a free
view: oneDNN's grouped convolution is 4-5x faster with N*C groups than with C. The fold
lives inside the op, so traced graphs never see the batch size.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["forward", "backward", "pass1d", "pass1d_adjoint"]

#: NCHW inputs with fewer channels than this are filtered with the batch folded into the channels.
FOLD_CHANNELS = 8


def _weight(kernel: torch.Tensor, dim: int) -> torch.Tensor:
    channels, size = kernel.shape
    return kernel.view(channels, 1, 1, size) if dim == 3 else kernel.view(channels, 1, size, 1)


def _pad(r: int, dim: int):
    return (r, r, 0, 0) if dim == 3 else (0, 0, r, r)


def pass1d(x: torch.Tensor, kernel: torch.Tensor, dim: int, padding_mode: str, stride: int = 1) -> torch.Tensor:
    """One depth-wise 1-D pass of ``kernel`` (C, k) along ``dim`` (2: height, 3: width), output every ``stride``."""
    channels, size = kernel.shape
    r = size // 2
    conv_stride = (1, stride) if dim == 3 else (stride, 1)
    if padding_mode == "zeros":
        padding = (0, r) if dim == 3 else (r, 0)
        return F.conv2d(x, _weight(kernel, dim), stride=conv_stride, padding=padding, groups=channels)
    return F.conv2d(F.pad(x, _pad(r, dim), mode=padding_mode), _weight(kernel, dim), stride=conv_stride,
                    groups=channels)


def _pad_adjoint(grad: torch.Tensor, x: torch.Tensor, r: int, dim: int, padding_mode: str) -> torch.Tensor:
    """The adjoint of ``F.pad(x, r on both sides of dim, mode)``: padded gradient -> gradient of ``x``."""
    if padding_mode == "reflect":
        return torch.ops.aten.reflection_pad2d_backward(grad, x, list(_pad(r, dim)))
    if padding_mode == "replicate":
        return torch.ops.aten.replication_pad2d_backward(grad, x, list(_pad(r, dim)))
    n = x.shape[dim]  # circular: the left pad is x[n-r:], the right pad x[:r]
    out = grad.narrow(dim, r, n).clone()
    if r:
        out.narrow(dim, 0, r).add_(grad.narrow(dim, n + r, r))
        out.narrow(dim, n - r, r).add_(grad.narrow(dim, 0, r))
    return out


def pass1d_adjoint(grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, dim: int, padding_mode: str,
                   stride: int = 1) -> torch.Tensor:
    """The adjoint of :func:`pass1d` applied to ``grad``: the gradient of its input ``x`` (only its shape is read)."""
    channels, size = kernel.shape
    r = size // 2
    n = x.shape[dim]
    extra = n - 1 - (grad.shape[dim] - 1) * stride  # output_padding: restores n from ceil(n / stride)
    conv_stride = (1, stride) if dim == 3 else (stride, 1)
    out_pad = (0, extra) if dim == 3 else (extra, 0)
    if padding_mode == "zeros":
        padding = (0, r) if dim == 3 else (r, 0)
        return F.conv_transpose2d(grad, _weight(kernel, dim), stride=conv_stride, padding=padding,
                                  output_padding=out_pad, groups=channels)
    padded = F.conv_transpose2d(grad, _weight(kernel, dim), stride=conv_stride, output_padding=out_pad,
                                groups=channels)
    return _pad_adjoint(padded, x, r, dim, padding_mode)


def _fold(x: torch.Tensor, kernel: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(x as (1, N*C, H, W), kernel repeated N times)`` for few-channel NCHW input, else ``None``."""
    n, channels, h, w = x.shape
    if channels < FOLD_CHANNELS and n > 1 and x.is_contiguous():
        return x.view(1, n * channels, h, w), kernel.repeat(n, 1)
    return None


def forward(x: torch.Tensor, kernel: torch.Tensor, stride: Sequence[int], padding_mode: str,
            variant: str = "separable") -> torch.Tensor:
    """The envelope of ``x`` (N, C, H, W) with 1-D kernels ``kernel`` (C, k) in ``x``'s dtype and memory format.

    ``variant``: ``"separable"`` (two 1-D passes) or ``"full"`` (one ``k x k`` depth-wise conv).
    """
    sh, sw = stride
    folded = _fold(x, kernel)
    if folded is not None:
        out = forward(*folded, stride, padding_mode, variant)
        return out.view(x.shape[0], x.shape[1], *out.shape[-2:])
    if variant == "full":
        channels, size = kernel.shape
        r = size // 2
        weight = (kernel[:, :, None] * kernel[:, None, :]).unsqueeze(1)
        if padding_mode == "zeros":
            return F.conv2d(x, weight, stride=(sh, sw), padding=r, groups=channels)
        return F.conv2d(F.pad(x, (r, r, r, r), mode=padding_mode), weight, stride=(sh, sw), groups=channels)
    return pass1d(pass1d(x, kernel, 3, padding_mode, sw), kernel, 2, padding_mode, sh)


def backward(grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, dkernel: torch.Tensor,
             stride: Sequence[int], padding_mode: str, need_x: bool,
             need_sigma: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    r"""``(grad_x, per-channel sigma gradient (C,))`` of the envelope, each ``None`` when not needed.

    ``dkernel`` is :math:`\partial \mathbf g / \partial\tilde\sigma` (C, k). Eq. (7):
    :math:`\partial L/\partial X = P_w^\top P_h^\top(\partial L/\partial Y)`; eq. (8) for the
    separable kernel: :math:`\partial L/\partial\tilde\sigma_c = \sum \partial L/\partial Y \cdot
    [P_h(P_w(X, g'), g) + P_h(P_w(X, g), g')]`, both sums over one channel.
    """
    sh, sw = stride
    folded = _fold(x, kernel)
    if folded is not None:
        n, c = x.shape[:2]
        flat_x, flat_k = folded
        gx, gs = backward(grad.contiguous().view(1, n * c, *grad.shape[-2:]), flat_x, flat_k,
                          dkernel.repeat(n, 1), stride, padding_mode, need_x, need_sigma)
        return (gx.view(x.shape) if gx is not None else None), (gs.view(n, c).sum(0) if gs is not None else None)
    grad = grad.to(x.dtype)
    rows = pass1d(x, kernel, 3, padding_mode, sw)  # (N, C, H, OW): the forward's intermediate
    grad_x = grad_sigma = None
    if need_x:
        grad_rows = pass1d_adjoint(grad, rows, kernel, 2, padding_mode, sh)
        grad_x = pass1d_adjoint(grad_rows, x, kernel, 3, padding_mode, sw)
    if need_sigma:
        drows = pass1d(x, dkernel.to(x.dtype), 3, padding_mode, sw)
        both = pass1d(torch.cat([drows, rows], 1), torch.cat([kernel, dkernel.to(x.dtype)], 0), 2, padding_mode, sh)
        channels = x.shape[1]
        deriv = both[:, :channels] + both[:, channels:]
        grad_sigma = (grad.to(deriv.dtype) * deriv).sum((0, 2, 3), dtype=torch.float64 if x.dtype == torch.float64
                                                          else torch.float32)
    return grad_x, grad_sigma
