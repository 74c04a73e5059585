"""FLOP formulas of the ops for :class:`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from .. import kernels as EF
from .library import op_size

__all__ = ["envelope_flops", "separable_macs"]


def envelope_flops(x_shape, size, stride) -> int:
    r"""FLOPs (2 per multiply-add) of the separable envelope at the positions it computes (``size``: one or per axis).

    The passes run from the last axis to the first, each on its input at the strided positions of
    its own axis: in 2-D the width pass on every input row at the strided columns, the height pass
    at the strided output positions, :math:`2 N C k_g \lceil W/s_w \rceil (H + \lceil H/s_h \rceil)`.
    """
    out = [(n - 1) // s + 1 for n, s in zip(list(x_shape)[2:], stride)]
    return 2 * separable_macs(x_shape, out, size)


def separable_macs(x_shape, out_spatial, size) -> int:
    """Multiply-adds of the separable passes (last axis first) from an input of ``x_shape`` to ``out_spatial``.

    Each pass computes its own axis at the output positions: its axis's size (``size``, an int
    or one per axis) multiply-adds per element it outputs. The 1-tap envelope (every axis 1) is
    the identity, no work; a 1-tap pass among longer ones is computed, one multiply-add per element.
    """
    sizes = EF.axis_sizes(size, len(x_shape) - 2)
    shape, macs = list(x_shape), 0
    for axis in range(len(shape) - 1, 1, -1):
        shape[axis] = out_spatial[axis - 2]
        elements = 1
        for n in shape:
            elements *= n
        if max(sizes) > 1:
            macs += sizes[axis - 2] * elements
    return macs


@register_flop_formula(torch.ops.envconv.envelope)
def _(x_shape, raw_shape, size, stride, padding_mode=None, impl=None, axis_sizes=None, *args, out_shape=None,
      **kwargs) -> int:
    return envelope_flops(x_shape, op_size(size, axis_sizes), stride)


@register_flop_formula(torch.ops.envconv.envelope_backward)
def _(grad_shape, x_shape, raw_shape, size, stride, padding_mode, impl, need_x, need_sigma, axis_sizes=None, *args,
      out_shape=None, **kwargs) -> int:
    # input gradient: the transposed passes (a forward's count); sigma gradient: about two forwards'
    # passes (the passes with the derivative kernel along one axis and the Gaussian along the
    # others, sharing the forward's intermediates) and the dot product with the gradient
    sizes = op_size(size, axis_sizes)
    flops = envelope_flops(x_shape, sizes, stride) if need_x else 0
    if need_sigma and size > 1:
        elements = 1
        for n in grad_shape:
            elements *= n
        flops += 2 * envelope_flops(x_shape, sizes, stride) + 2 * elements
    return flops


@register_flop_formula(torch.ops.envconv.envelope_conv)
def _(x_shape, raw_shape, w_shape, b_shape, size, env_stride, padding_mode, impl, stride, padding, dilation, groups,
      axis_sizes=None, *args, out_shape=None, **kwargs) -> int:
    smoothed = (x_shape[0], x_shape[1], *((n - 1) // s + 1 for n, s in zip(x_shape[2:], env_stride)))
    return envelope_flops(x_shape, op_size(size, axis_sizes), env_stride) + conv_flop_count(
        smoothed, w_shape, out_shape, transposed=False)
