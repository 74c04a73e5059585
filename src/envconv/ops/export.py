"""The envelope from plain ATen ops, for exporters that cannot carry a custom op (``torch.onnx.export``)."""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .. import kernels as EF
from . import composite
from .library import axis_kernels, strided

__all__ = ["envelope_decomposed"]


def envelope_decomposed(x: Tensor, raw_sigma: Tensor, size, stride: List[int], padding_mode: str) -> Tensor:
    """The envelope from differentiable ATen ops only (a 1-D pass per spatial axis, no batch folding).

    Used while ``torch.onnx.export`` traces a model (:func:`torch.onnx.is_in_onnx_export`): the
    exported graph then holds a depth-wise ``Conv`` node per spatial axis and envelope (two in
    2-D), for any batch size.
    The dynamo exporter computes their kernel from the exported ``raw_sigma``; the TorchScript
    exporter, which needs kernels of known shape, gets it as a constant. ``size``: an int or one per axis.
    """
    if max(EF.axis_sizes(size, x.dim() - 2)) == 1:
        return strided(x, stride)
    kernels = [k.to(x.dtype) for k in axis_kernels(EF.gaussian_kernel1d, raw_sigma, size, x)]
    if torch.jit.is_tracing():
        # The TorchScript exporter needs Conv kernels of known shape: bake the kernels in as
        # constants (the exported graph is for inference; sigma is fixed there anyway).
        kernels = [torch.tensor(k.detach().tolist(), dtype=x.dtype, device=x.device) for k in kernels]
    for dim in composite.axes(x):
        x = composite.pass1d(x, kernels[dim - 2], dim, padding_mode, stride[dim - 2])
    return x
