r"""Triton kernels of the envelope for CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``).

One family of kernels for 1-D, 2-D and 3-D maps, one sigma per channel or per channel and axis:

* forward: one pass per spatial axis (the last first, the intermediate stored between passes),
  each program a (channels x output positions) tile of one sample, at the strided positions
  only; any memory layout (strides are arguments), so NCHW and channels_last run the same kernel
  with coalesced loads along whichever axis is contiguous.
* backward: the passes swept in reverse: each pass's input gradient by its transpose (eq. (7)),
  and its axis's sigma gradient by eq. (8) with the gradient arriving at that pass, reduced per
  program and then per channel - no depth-wise weight gradient is formed.

Inputs may be float16, bfloat16, float32 or float64; arithmetic is in float32 (float64 for
float64 inputs). No ``tl.dot``: a 1-D filter has nothing for tensor cores, and TF32 never applies.

This module imports triton; :mod:`envconv.ops.library` imports it only when a Triton kernel runs.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .composite import per_axis
from .layout import empty_like_layout, is_channels_last

__all__ = ["forward", "backward"]


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _blocks(channels: int, width: int, channels_last: bool) -> Tuple[int, int]:
    """Tile sizes: wide along the contiguous axis (channels in channels_last, columns in NCHW)."""
    if channels_last:
        return min(64, triton.next_power_of_2(channels)), min(16, triton.next_power_of_2(width))
    return min(8, triton.next_power_of_2(channels)), min(128, triton.next_power_of_2(width))


def forward(x: torch.Tensor, kernel, stride: Sequence[int]) -> torch.Tensor:
    """The envelope (zero padding) of ``x`` in ``x``'s memory format: one pass per spatial axis, the last first.

    ``kernel``: one (C, k) tensor for every spatial axis, or a sequence of them, one per axis.
    """
    return _passes(x, per_axis(kernel, x.dim() - 2), stride, x.dim() - 2)[-1]


def backward(grad: torch.Tensor, x: torch.Tensor, kernel, dkernel, stride: Sequence[int], need_x: bool,
             need_sigma: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(grad_x, sigma gradient)`` of :func:`forward`, each ``None`` when not needed.

    The sigma gradient is per channel (C,) for one kernel (the sum of the axes' columns: the
    product rule), per channel and axis (C, n) for one per axis.
    """
    grad_x, grad_sigma = _backward_per_axis(grad, x, per_axis(kernel, x.dim() - 2), per_axis(dkernel, x.dim() - 2),
                                            stride, need_x, need_sigma)
    if grad_sigma is not None and isinstance(kernel, torch.Tensor):
        grad_sigma = grad_sigma.sum(1)
    return grad_x, grad_sigma


# ---- one pass along one spatial axis, on a 5-D view (N, C, D, H, W) of any input ---------------------------

@triton.jit
def _position(p, D, H, W):
    """(d, h, w) of flat position ``p`` over a (D, H, W) grid; W varies fastest."""
    w = p % W
    h = (p // W) % H
    d = p // (W * H)
    return d, h, w


@triton.jit
def _pass_positions(C, OD, OH, OW, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's sample, channels and output positions (d, h, w) over an (OD, OH, OW) grid, with masks."""
    n = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ps = (tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    d, h, w = _position(ps, OD, OH, OW)
    return n, cs, cs < C, d, h, w, ps < OD * OH * OW


@triton.jit
def _pass_tile(x_ptr, w_ptr, n, cs, cmask, d, h, w, pmask, C, D, H, W, sxn, sxc, sxd, sxh, sxw,
               AXIS: tl.constexpr, S: tl.constexpr, K: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_P: tl.constexpr, TRANSPOSE: tl.constexpr):
    """sum_i w[i, c] * x at the positions tap i reads along AXIS (or, TRANSPOSE, the positions that read tap i)."""
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=w_ptr.dtype.element_ty)
    o = h
    n_axis = H
    if AXIS == 2:
        o = d
        n_axis = D
    if AXIS == 4:
        o = w
        n_axis = W
    for i in tl.static_range(K):
        if TRANSPOSE:  # the output index that reads input index o with tap i: (o - i + r) / S
            num = o - i + K // 2
            src = num // S
            ok = (num >= 0) & (num % S == 0) & (src < n_axis)
        else:
            src = o * S + i - K // 2
            ok = (src >= 0) & (src < n_axis)
        offset = n * sxn + cs[:, None] * sxc
        if AXIS == 2:
            offset += (src * sxd + h * sxh + w * sxw)[None, :]
        elif AXIS == 3:
            offset += (d * sxd + src * sxh + w * sxw)[None, :]
        else:
            offset += (d * sxd + h * sxh + src * sxw)[None, :]
        xv = tl.load(x_ptr + offset, mask=cmask[:, None] & (pmask & ok)[None, :], other=0.0)
        wi = tl.load(w_ptr + i * C + cs, mask=cmask, other=0.0)
        acc += wi[:, None] * xv.to(w_ptr.dtype.element_ty)
    return acc


@triton.jit
def _pass_kernel(x_ptr, w_ptr, y_ptr, C, D, H, W, OD, OH, OW, sxn, sxc, sxd, sxh, sxw, syn, syc, syd, syh, syw,
                 AXIS: tl.constexpr, S: tl.constexpr, K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                 TRANSPOSE: tl.constexpr):
    """The pass of x (D, H, W) along AXIS, or its transpose, into y (OD, OH, OW)."""
    n, cs, cmask, d, h, w, pmask = _pass_positions(C, OD, OH, OW, BLOCK_C, BLOCK_P)
    acc = _pass_tile(x_ptr, w_ptr, n, cs, cmask, d, h, w, pmask, C, D, H, W, sxn, sxc, sxd, sxh, sxw,
                     AXIS, S, K, BLOCK_C, BLOCK_P, TRANSPOSE)
    out = y_ptr + n * syn + cs[:, None] * syc + (d * syd + h * syh + w * syw)[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _pass_sigma_kernel(gy_ptr, x_ptr, d_ptr, part_ptr, C, D, H, W, OD, OH, OW, sgn, sgc, sgd, sgh, sgw,
                       sxn, sxc, sxd, sxh, sxw, AXIS: tl.constexpr, S: tl.constexpr, K: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Per program and channel: sum gy * (the pass of x with the derivative kernel), eq. (8) for one axis."""
    n, cs, cmask, d, h, w, pmask = _pass_positions(C, OD, OH, OW, BLOCK_C, BLOCK_P)
    deriv = _pass_tile(x_ptr, d_ptr, n, cs, cmask, d, h, w, pmask, C, D, H, W, sxn, sxc, sxd, sxh, sxw,
                       AXIS, S, K, BLOCK_C, BLOCK_P, False)
    mask = cmask[:, None] & pmask[None, :]
    gv = tl.load(gy_ptr + n * sgn + cs[:, None] * sgc + (d * sgd + h * sgh + w * sgw)[None, :], mask=mask, other=0.0)
    partial = tl.sum(gv.to(d_ptr.dtype.element_ty) * deriv, axis=1)
    slot = tl.program_id(0) * tl.num_programs(2) + tl.program_id(2)
    tl.store(part_ptr + slot * C + cs, partial, mask=cmask)


def _as_5d(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` (N, C, *spatial) as (N, C, D, H, W), missing leading spatial axes of size 1."""
    while t.dim() < 5:
        t = t.unsqueeze(2)
    return t


def _with_axis(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """An empty tensor like ``t`` (its memory format) with spatial axis ``axis`` (a tensor dim) of ``size``."""
    shape = list(t.shape)
    shape[axis] = size
    return empty_like_layout(t, shape)


def _pass_grid(t: torch.Tensor, out: torch.Tensor):
    c = t.shape[1]
    positions = out[0, 0].numel()
    bc, bp = _blocks(c, positions, is_channels_last(t) or is_channels_last(out))
    return (t.shape[0], triton.cdiv(c, bc), triton.cdiv(positions, bp)), bc, bp


def _run_pass(t: torch.Tensor, taps: torch.Tensor, axis: int, stride: int, out: torch.Tensor, transpose: bool):
    """``out`` = the pass of ``t`` along tensor axis ``axis`` (its transpose with ``transpose``); returns ``out``."""
    grid, bc, bp = _pass_grid(t, out)
    t5, o5 = _as_5d(t), _as_5d(out)
    axis5 = axis + 5 - t.dim()
    _pass_kernel[grid](t5, taps, o5, t.shape[1], *t5.shape[2:], *o5.shape[2:], *t5.stride(), *o5.stride(),
                       AXIS=axis5, S=stride, K=taps.shape[0], BLOCK_C=bc, BLOCK_P=bp, TRANSPOSE=transpose)
    return out


def _taps(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return kernel.to(_accumulation_dtype(x)).t().contiguous()


def _passes(x: torch.Tensor, kernels, stride: Sequence[int], count: int):
    """The inputs of the first ``count`` passes (last axis first) and the last result: [x, t1, ..., t_count]."""
    ts = [x]
    for j in range(count):
        axis = x.dim() - 1 - j
        t = ts[-1]
        out = _with_axis(t, axis, (t.shape[axis] - 1) // stride[axis - 2] + 1)
        ts.append(_run_pass(t, _taps(kernels[axis - 2], x), axis, stride[axis - 2], out, False))
    return ts


def _backward_per_axis(grad: torch.Tensor, x: torch.Tensor, kernels, dkernels, stride: Sequence[int], need_x: bool,
                       need_sigma: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(grad_x, sigma gradient (C, n), a column per spatial axis)`` of the passes, ``None`` if not needed."""
    dims = x.dim() - 2
    ts = _passes(x, kernels, stride, dims - 1)
    acc = _accumulation_dtype(x)
    columns = [None] * dims
    for j in range(dims - 1, -1, -1):  # the last pass (the first axis) first
        axis, t = x.dim() - 1 - j, ts[j]
        a = axis - 2
        if need_sigma:
            grid, bc, bp = _pass_grid(t, grad)
            partials = torch.empty((grid[0] * grid[2], t.shape[1]), dtype=acc, device=x.device)
            t5, g5 = _as_5d(t), _as_5d(grad)
            _pass_sigma_kernel[grid](g5, t5, _taps(dkernels[a], x), partials, t.shape[1], *t5.shape[2:],
                                     *g5.shape[2:], *g5.stride(), *t5.stride(), AXIS=axis + 5 - t.dim(),
                                     S=stride[a], K=dkernels[a].shape[1], BLOCK_C=bc, BLOCK_P=bp)
            columns[a] = partials.sum(0)
        if j > 0 or need_x:
            grad = _run_pass(grad, _taps(kernels[a], x), axis, stride[a], _with_axis(t, axis, t.shape[axis]), True)
    grad_sigma = torch.stack(columns, 1) if need_sigma else None
    return (grad if need_x else None), grad_sigma
