r"""The envelope as PyTorch operators: ``torch.ops.envconv.*`` and the kernels behind them.

:mod:`envconv.ops.library` defines the ops (schemas, fake kernels, autocast),
:mod:`envconv.ops.autograd` their autograd (backward, double backward, forward AD, torch.func),
:mod:`envconv.ops.flop_formulas` their FLOP counts and :mod:`envconv.ops.export` the plain-ATen
form the ONNX exporters get; :mod:`envconv.ops.dispatch` decides which kernel (C++ on CPU, Triton,
composite ATen) computes them, with public PyTorch APIs only. The functional API over the ops,
with its argument checks, is :mod:`envconv.functional`.
"""

from . import autograd, export, flop_formulas, library
from .dispatch import IMPLS, backward_impl, forward_impl
from .flop_formulas import envelope_flops

__all__ = ["IMPLS", "envelope_flops", "forward_impl", "backward_impl", "autograd", "export", "flop_formulas",
           "library"]
