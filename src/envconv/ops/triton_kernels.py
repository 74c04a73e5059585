r"""Triton kernels of the envelope for CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``).

* forward: each program computes a (channels x output columns) tile of one output row, at
  the strided positions only; any memory layout (strides are arguments), so NCHW and
  channels_last run the same kernel with coalesced loads along whichever axis is contiguous.
* backward: the input gradient by the transposed separable filter (eq. (7)), and the sigma
  gradient by eq. (8): per output position the derivative-of-Gaussian filtering
  :math:`\sum_{ij}(g'_i g_j + g_i g'_j) X` times the output gradient, reduced per program and
  then per channel - no depth-wise weight gradient is formed.

Inputs may be float16, bfloat16, float32 or float64; arithmetic is in float32 (float64 for
float64 inputs). No ``tl.dot``: a 1-D filter has nothing for tensor cores, and TF32 never applies.
This module imports triton; :mod:`envconv.ops.dispatch` imports it only when a Triton kernel runs.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .layout import empty_like_layout, is_channels_last

__all__ = ["forward", "backward"]


@triton.jit
def _output_tile(C, OH, OW, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's tile: output row ``n * OH + oh``, its channels and output columns, and their masks."""
    row = tl.program_id(0)
    n = (row // OH).to(tl.int64)
    oh = row % OH
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ows = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    return row, n, oh, cs, ows, cs < C, ows < OW


@triton.jit
def _filtered_tile(x_ptr, g_ptr, d_ptr, n, oh, cs, ows, cmask, omask, C, H, W, sxn, sxc, sxh, sxw,
                   SH: tl.constexpr, SW: tl.constexpr, K: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_W: tl.constexpr, DERIVATIVE: tl.constexpr):
    r"""The tile of the envelope, or with ``DERIVATIVE`` of eq. (8)'s filtering, at the strided positions.

    That is :math:`\sum_{ij} g_i g_j X`, or :math:`\sum_{ij} (g'_i g_j + g_i g'_j) X`.
    """
    out = tl.zeros([BLOCK_C, BLOCK_W], dtype=g_ptr.dtype.element_ty)
    for i in tl.static_range(K):
        h = oh * SH + i - K // 2
        inside = (h >= 0) & (h < H)
        gi = tl.load(g_ptr + i * C + cs, mask=cmask, other=0.0)
        smooth = tl.zeros([BLOCK_C, BLOCK_W], dtype=g_ptr.dtype.element_ty)
        dsmooth = tl.zeros([BLOCK_C, BLOCK_W], dtype=g_ptr.dtype.element_ty)
        for j in tl.static_range(K):
            w = ows * SW + j - K // 2
            mask = cmask[:, None] & (omask & (w >= 0) & (w < W))[None, :] & inside
            xv = tl.load(x_ptr + n * sxn + cs[:, None] * sxc + h * sxh + w[None, :] * sxw, mask=mask, other=0.0)
            xv = xv.to(g_ptr.dtype.element_ty)
            gj = tl.load(g_ptr + j * C + cs, mask=cmask, other=0.0)
            smooth += gj[:, None] * xv
            if DERIVATIVE:
                dj = tl.load(d_ptr + j * C + cs, mask=cmask, other=0.0)
                dsmooth += dj[:, None] * xv
        if DERIVATIVE:
            di = tl.load(d_ptr + i * C + cs, mask=cmask, other=0.0)
            out += di[:, None] * smooth + gi[:, None] * dsmooth
        else:
            out += gi[:, None] * smooth
    return out


@triton.jit
def _forward_kernel(x_ptr, g_ptr, y_ptr, C, H, W, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                    SH: tl.constexpr, SW: tl.constexpr, K: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_W: tl.constexpr):
    row, n, oh, cs, ows, cmask, omask = _output_tile(C, OH, OW, BLOCK_C, BLOCK_W)
    acc = _filtered_tile(x_ptr, g_ptr, g_ptr, n, oh, cs, ows, cmask, omask, C, H, W, sxn, sxc, sxh, sxw,
                         SH, SW, K, BLOCK_C, BLOCK_W, False)
    out = y_ptr + n * syn + cs[:, None] * syc + oh * syh + ows[None, :] * syw
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=cmask[:, None] & omask[None, :])


@triton.jit
def _grad_input_kernel(gy_ptr, g_ptr, gx_ptr, C, H, W, OH, OW, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                       SH: tl.constexpr, SW: tl.constexpr, K: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_W: tl.constexpr):
    row = tl.program_id(0)  # n * H + h: one input row
    n = (row // H).to(tl.int64)
    h = row % H
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ws = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    cmask = cs < C
    wmask = ws < W
    acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=g_ptr.dtype.element_ty)
    for i in tl.static_range(K):
        num_h = h - i + K // 2  # the output row oh = num_h / SH reads input row h with tap i
        oh = num_h // SH
        row_ok = (num_h >= 0) & (num_h % SH == 0) & (oh < OH)
        gi = tl.load(g_ptr + i * C + cs, mask=cmask, other=0.0)
        part = tl.zeros([BLOCK_C, BLOCK_W], dtype=g_ptr.dtype.element_ty)
        for j in tl.static_range(K):
            num_w = ws - j + K // 2
            ow = num_w // SW
            col_ok = (num_w >= 0) & (num_w % SW == 0) & (ow < OW) & wmask
            mask = cmask[:, None] & col_ok[None, :] & row_ok
            gv = tl.load(gy_ptr + n * sgn + cs[:, None] * sgc + oh * sgh + ow[None, :] * sgw, mask=mask, other=0.0)
            gj = tl.load(g_ptr + j * C + cs, mask=cmask, other=0.0)
            part += gj[:, None] * gv.to(g_ptr.dtype.element_ty)
        acc += gi[:, None] * part
    out = gx_ptr + n * sxn + cs[:, None] * sxc + h * sxh + ws[None, :] * sxw
    tl.store(out, acc.to(gx_ptr.dtype.element_ty), mask=cmask[:, None] & wmask[None, :])


@triton.jit
def _grad_sigma_kernel(gy_ptr, x_ptr, g_ptr, d_ptr, part_ptr, C, H, W, OH, OW, sgn, sgc, sgh, sgw,
                       sxn, sxc, sxh, sxw, SH: tl.constexpr, SW: tl.constexpr, K: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    row, n, oh, cs, ows, cmask, omask = _output_tile(C, OH, OW, BLOCK_C, BLOCK_W)
    deriv = _filtered_tile(x_ptr, g_ptr, d_ptr, n, oh, cs, ows, cmask, omask, C, H, W, sxn, sxc, sxh, sxw,
                           SH, SW, K, BLOCK_C, BLOCK_W, True)
    mask = cmask[:, None] & omask[None, :]
    gv = tl.load(gy_ptr + n * sgn + cs[:, None] * sgc + oh * sgh + ows[None, :] * sgw, mask=mask, other=0.0)
    partial = tl.sum(gv.to(g_ptr.dtype.element_ty) * deriv, axis=1)
    slot = row * tl.num_programs(2) + tl.program_id(2)
    tl.store(part_ptr + slot * C + cs, partial, mask=cmask)


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _blocks(channels: int, width: int, channels_last: bool) -> Tuple[int, int]:
    """Tile sizes: wide along the contiguous axis (channels in channels_last, columns in NCHW)."""
    if channels_last:
        return min(64, triton.next_power_of_2(channels)), min(16, triton.next_power_of_2(width))
    return min(8, triton.next_power_of_2(channels)), min(128, triton.next_power_of_2(width))


def forward(x: torch.Tensor, kernel: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """The envelope (zero padding) of ``x`` with 1-D kernels ``kernel`` (C, k), in ``x``'s memory format."""
    n, c, h, w = x.shape
    sh, sw = stride
    oh, ow = (h - 1) // sh + 1, (w - 1) // sw + 1
    y = empty_like_layout(x, (n, c, oh, ow))
    g = kernel.to(_accumulation_dtype(x)).t().contiguous()
    bc, bw = _blocks(c, ow, is_channels_last(x))
    grid = (n * oh, triton.cdiv(c, bc), triton.cdiv(ow, bw))
    _forward_kernel[grid](x, g, y, c, h, w, oh, ow, *x.stride(), *y.stride(), SH=sh, SW=sw, K=g.shape[0],
                          BLOCK_C=bc, BLOCK_W=bw)
    return y


def backward(grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, dkernel: torch.Tensor,
             stride: Sequence[int], need_x: bool,
             need_sigma: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(grad_x, per-channel sigma gradient (C,))`` of the envelope, each ``None`` when not needed."""
    n, c, h, w = x.shape
    sh, sw = stride
    oh, ow = grad.shape[-2:]
    acc = _accumulation_dtype(x)
    g = kernel.to(acc).t().contiguous()
    grad_x = grad_sigma = None
    if need_x:
        grad_x = empty_like_layout(x, x.shape)
        bc, bw = _blocks(c, w, is_channels_last(x))
        grid = (n * h, triton.cdiv(c, bc), triton.cdiv(w, bw))
        _grad_input_kernel[grid](grad, g, grad_x, c, h, w, oh, ow, *grad.stride(), *grad_x.stride(), SH=sh, SW=sw,
                                 K=g.shape[0], BLOCK_C=bc, BLOCK_W=bw)
    if need_sigma:
        d = dkernel.to(acc).t().contiguous()
        bc, bw = _blocks(c, ow, is_channels_last(x))
        grid = (n * oh, triton.cdiv(c, bc), triton.cdiv(ow, bw))
        partials = torch.empty((grid[0] * grid[2], c), dtype=acc, device=x.device)
        _grad_sigma_kernel[grid](grad, x, g, d, partials, c, h, w, oh, ow, *grad.stride(), *x.stride(), SH=sh,
                                 SW=sw, K=g.shape[0], BLOCK_C=bc, BLOCK_W=bw)
        grad_sigma = partials.sum(0)
    return grad_x, grad_sigma
