"""The memory layout every envelope kernel keeps: channels_last in, channels_last out; NCHW otherwise."""

from typing import Sequence

import torch

__all__ = ["is_channels_last", "memory_format", "empty_like_layout"]


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-D channels_last tensor (and not also plainly contiguous, as 1-pixel maps are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format an op's outputs for input ``x`` have."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def empty_like_layout(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` with ``x``'s dtype, device and memory format."""
    return torch.empty(tuple(shape), dtype=x.dtype, device=x.device, memory_format=memory_format(x))
