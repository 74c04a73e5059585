r"""The envelope as PyTorch operators: ``torch.ops.envconv.*`` and the kernels behind them.

:mod:`envconv.ops.library` registers the ops (fake kernels, autograd, autocast, FLOP formulas);
:mod:`envconv.ops.dispatch` alone decides which kernel (C++ on CPU, Triton, composite ATen)
computes them. The functional API over the ops, with its argument checks, is
:mod:`envconv.functional`.
"""

from . import library
from .dispatch import IMPLS, backward_impl, forward_impl
from .library import envelope_flops

__all__ = ["IMPLS", "envelope_flops", "forward_impl", "backward_impl", "library"]
