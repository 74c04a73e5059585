r"""The envelope as PyTorch operators: ``torch.ops.envconv.*`` and the kernels behind them.

:mod:`envconv.ops.library` registers the ops (fake kernels, autocast, FLOP formulas) and
:mod:`envconv.ops.autograd` their autograd (backward, double backward, forward AD, torch.func);
:mod:`envconv.ops.dispatch` alone decides which kernel (C++ on CPU, Triton, composite ATen)
computes them. The functional API over the ops, with its argument checks, is
:mod:`envconv.functional`.
"""

from . import autograd, library
from .dispatch import IMPLS, backward_impl, forward_impl
from .library import envelope_flops

__all__ = ["IMPLS", "envelope_flops", "forward_impl", "backward_impl", "autograd", "library"]
