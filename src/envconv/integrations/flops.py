r"""Counting a converted model's operations in third-party FLOP counters.

PyTorch's own :class:`torch.utils.flop_counter.FlopCounterMode` counts envconv's ops through
the formulas registered with them (:mod:`envconv.ops.library`). Other counters do not know the
ops or the layer, and leave out either the whole converted convolution or its envelope; each
gets what it needs from one call here:

==============================  =================================================================
counter                         call
==============================  =================================================================
fvcore ``FlopCountAnalysis``    ``FlopCountAnalysis(model, x).set_op_handle(**fvcore_handles())``
ptflops (both backends)         ``get_model_complexity_info(..., custom_modules_hooks=ptflops_hooks())``
thop ``profile``                ``thop.profile(model, (x,), custom_ops=thop_ops())``
torchinfo ``summary``           ``torchinfo_summary(model, input_size=...)`` (wraps ``summary``)
==============================  =================================================================

Each counts a converted layer as its own rule counts the convolution (with or without the
bias, as that tool does for a plain ``nn.Conv2d``) plus the envelope's multiply-adds,
:math:`N C k_g \lceil W/s_w\rceil (H + \lceil H/s_h\rceil)` for the two separable passes
(``envconv.ops.flop_formulas.envelope_flops`` halved), so a tool's count of a converted model exceeds
its count of the plain model by exactly what ``FlopCounterMode`` adds. All four counters
report multiply-accumulates (MACs); ``FlopCounterMode`` reports two FLOPs per MAC.

None of the counters is a dependency of envconv: each function imports its tool when called.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Dict, List, Sequence

from torch import nn

from ..conv import DisentangledConv1d, DisentangledConv2d, DisentangledConv3d
from ..envelope import GaussianEnvelope
from ..ops.flop_formulas import envelope_flops, separable_macs

__all__ = ["envelope_macs", "conv_macs", "fvcore_handles", "ptflops_hooks", "thop_ops", "torchinfo_summary"]


def _pair(value) -> List[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 2


#: The layers with a learned envelope whose convolution the hooks count too (2-D, 1-D, 3-D).
LAYERS = (DisentangledConv2d, DisentangledConv1d, DisentangledConv3d)


def _passes_macs(x_shape: Sequence[int], y_shape: Sequence[int], size) -> int:
    """Multiply-adds of the 1-D passes from an envelope's input (N, C, ...) to its output."""
    return separable_macs([int(n) for n in x_shape], [int(n) for n in y_shape[2:]], size)


def envelope_macs(layer: nn.Module, x_shape: Sequence[int], y_shape: Sequence[int]) -> int:
    """Multiply-adds of the Gaussian envelope in ``layer`` for one forward from ``x_shape`` to ``y_shape``.

    Args:
        layer: a :class:`~envconv.DisentangledConv2d` (its envelope on the input, at the
            strided positions of a strided 1x1 conv, or on the output with ``order="conv-env"``),
            its 1-D / 3-D counterpart, or a :class:`~envconv.GaussianEnvelope`.
        x_shape: the shape (N, C, H, W) of the layer's input ((N, C, L), (N, C, D, H, W) in 1-D, 3-D).
        y_shape: the shape of its output.

    Example:
        >>> layer = DisentangledConv2d(8, 16, 3, padding=1, envelope_size=5)
        >>> envelope_macs(layer, (2, 8, 10, 10), (2, 16, 10, 10))  # 2*8*5*10*(10+10)
        16000
    """
    if isinstance(layer, GaussianEnvelope):
        return _passes_macs(x_shape, y_shape, layer.size)
    if not isinstance(layer, LAYERS):
        raise TypeError(f"expected a DisentangledConv1d/2d/3d or GaussianEnvelope, got {type(layer).__name__}")
    size, ones = layer.envelope.size, (1,) * len(layer.kernel_size)
    if layer.order == "conv-env":
        return envelope_flops(tuple(y_shape), size, ones) // 2
    stride = layer.stride if layer._sampled else ones
    return envelope_flops(tuple(x_shape), size, stride) // 2


def conv_macs(conv: nn.Conv2d, y_shape: Sequence[int], bias: bool = False) -> int:
    """Multiply-adds of ``conv``'s convolution alone for an output of ``y_shape``; ``bias``: one add per output."""
    n, d = int(y_shape[0]), int(y_shape[1])
    per_output = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    spatial = math.prod(int(s) for s in y_shape[2:])
    return n * d * spatial * (per_output + (1 if bias and conv.bias is not None else 0))


# ---- fvcore: handles for the traced ops -----------------------------------------------------------------

def _jit_shape(value) -> List[int]:
    return list(value.type().sizes())


def _jit_ints(value) -> List[int]:
    """An int list argument of a traced op: a constant, or a ``prim::ListConstruct`` of constants."""
    constant = value.toIValue()
    if constant is not None:
        return _pair(constant)
    return [int(v.toIValue()) for v in value.node().inputs()]


def _jit_sizes(inputs: List[Any], at: int, axis_at: int):
    """A traced op's envelope size: its ``size`` argument, or its per-axis ``axis_sizes`` where given."""
    if len(inputs) > axis_at:
        value = inputs[axis_at]  # a None constant, a constant list or a prim::ListConstruct
        if value.node().kind() == "prim::ListConstruct" or value.toIValue() is not None:
            return _jit_ints(value)
    return int(inputs[at].toIValue())


def _fvcore_envelope(inputs: List[Any], outputs: List[Any]) -> Counter:
    # envconv::envelope(x, raw_sigma, size, stride, padding_mode, impl, axis_sizes)
    size = _jit_sizes(inputs, 2, 6)
    return Counter({"envelope": _passes_macs(_jit_shape(inputs[0]), _jit_shape(outputs[0]), size)})


def _fvcore_envelope_conv(inputs: List[Any], outputs: List[Any]) -> Counter:
    # envconv::envelope_conv(x, raw_sigma, weight, bias, size, env_stride, padding_mode, impl,
    # stride, padding, dilation, groups, axis_sizes)
    x_shape, w_shape, y_shape = _jit_shape(inputs[0]), _jit_shape(inputs[2]), _jit_shape(outputs[0])
    size, env_stride = _jit_sizes(inputs, 4, 12), _jit_ints(inputs[5])
    conv = x_shape[0] * math.prod(w_shape) * math.prod(y_shape[2:])  # fvcore's rule: multiplies, no bias
    return Counter({"envelope": envelope_flops(tuple(x_shape), size, env_stride) // 2, "conv": conv})


def fvcore_handles() -> Dict[str, Callable]:
    """Op handles for fvcore's ``FlopCountAnalysis``, which counts from a ``torch.jit.trace`` of the model.

    Example::

        from fvcore.nn import FlopCountAnalysis
        flops = FlopCountAnalysis(model, x).set_op_handle(**envconv.integrations.flops.fvcore_handles())
        flops.total(), flops.by_operator()  # by operator: "conv", "envelope", ...
    """
    return {"envconv::envelope": _fvcore_envelope, "envconv::envelope_conv": _fvcore_envelope_conv}


# ---- ptflops: module hooks (pytorch backend) and op hooks (aten backend) -----------------------------------

def _ptflops_module_hook(module: nn.Module, inputs, output) -> None:
    x_shape, y_shape = tuple(inputs[0].shape), tuple(output.shape)
    macs = envelope_macs(module, x_shape, y_shape)
    if isinstance(module, LAYERS):
        macs += conv_macs(module, y_shape, bias=True)  # ptflops counts a conv's bias
    module.__flops__ += int(macs)


def _op_sizes(args, at: int, axis_at: int):
    """An op call's envelope size: ``args[at]``, or the per-axis ``args[axis_at]`` where given."""
    if len(args) > axis_at and args[axis_at] is not None:
        return [int(k) for k in args[axis_at]]
    return int(args[at])


def _ptflops_op(args, outputs, kind: str) -> int:
    if kind == "envelope":  # (x, raw_sigma, size, stride, padding_mode, impl, axis_sizes)
        return _passes_macs(tuple(args[0].shape), tuple(outputs[0].shape), _op_sizes(args, 2, 6))
    x, weight, bias, size, env_stride = args[0], args[2], args[3], _op_sizes(args, 4, 12), _pair(args[5])
    y_shape = tuple(outputs[0].shape)
    conv = x.shape[0] * math.prod(weight.shape) * math.prod(y_shape[2:])
    if bias is not None:  # ptflops' aten rule counts the bias
        conv += math.prod(y_shape)
    return envelope_flops(tuple(x.shape), size, env_stride) // 2 + conv


def ptflops_hooks() -> Dict[Any, Callable]:
    """``custom_modules_hooks`` for ptflops' ``get_model_complexity_info``, for either backend.

    The ``pytorch`` backend hooks modules (the layer and free-standing envelopes), the ``aten``
    backend ops (envconv's); each reads only its own keys, so one dict serves both.

    Example::

        from ptflops import get_model_complexity_info
        macs, params = get_model_complexity_info(model, (3, 224, 224), as_strings=False,
                                                 custom_modules_hooks=envconv.integrations.flops.ptflops_hooks())
    """
    import torch

    ops = torch.ops.envconv
    return {
        **{layer: _ptflops_module_hook for layer in LAYERS},
        GaussianEnvelope: _ptflops_module_hook,
        ops.envelope: lambda args, out: _ptflops_op(args, out, "envelope"),
        ops.envelope_conv: lambda args, out: _ptflops_op(args, out, "envelope_conv"),
    }


# ---- thop: custom ops -------------------------------------------------------------------------------------

def _thop_hook(module: nn.Module, inputs, output) -> None:
    import torch

    x_shape, y_shape = tuple(inputs[0].shape), tuple(output.shape)
    macs = envelope_macs(module, x_shape, y_shape)
    if isinstance(module, LAYERS):
        macs += conv_macs(module, y_shape, bias=False)  # thop's conv rule leaves the bias out
    module.total_ops += torch.DoubleTensor([int(macs)])


def thop_ops() -> Dict[type, Callable]:
    """``custom_ops`` for thop's ``profile``.

    Example::

        import thop
        macs, params = thop.profile(model, inputs=(x,), custom_ops=envconv.integrations.flops.thop_ops())
    """
    return {**{layer: _thop_hook for layer in LAYERS}, GaussianEnvelope: _thop_hook}


# ---- torchinfo: no hooks, so a wrapper -------------------------------------------------------------------

def torchinfo_summary(model: nn.Module, *args, **kwargs):
    """``torchinfo.summary(model, *args, **kwargs)`` with the converted layers' mult-adds counted.

    torchinfo computes a layer's mult-adds from its parameters and adds up leaf modules only;
    a :class:`~envconv.DisentangledConv2d` holds its envelope as a child, so it is not a leaf and
    torchinfo leaves it out, and an envelope's sigma is no weight it counts. This runs
    ``summary`` silently, gives each such layer its convolution's mult-adds by torchinfo's own
    rule (weights and bias times output positions) plus the envelope's, and every other
    :class:`~envconv.GaussianEnvelope` (at a pool, free-standing, before a re-parameterised
    block) its own, adds them to the total, and prints the result if ``verbose`` asks.

    Returns:
        torchinfo's ``ModelStatistics`` (``.total_mult_adds`` is the corrected total).
    """
    import torchinfo

    verbose = kwargs.pop("verbose", 1)
    stats = torchinfo.summary(model, *args, verbose=0, **kwargs)
    for info in stats.summary_list:
        if not info.output_size:
            continue
        if isinstance(info.module, LAYERS) and not info.is_leaf_layer:  # not in torchinfo's total
            macs = conv_macs(info.module, info.output_size, bias=True) + envelope_macs(info.module, info.input_size,
                                                                                     info.output_size)
            counted = 0
        elif isinstance(info.module, GaussianEnvelope) and not isinstance(getattr(info.parent_info, "module", None),
                                                                          LAYERS):  # a leaf: at a pool, alone, ...
            macs, counted = envelope_macs(info.module, info.input_size, info.output_size), info.macs or 0
        else:
            continue
        stats.total_mult_adds += macs - counted
        info.macs = macs
    if verbose:
        print(stats)
    return stats
