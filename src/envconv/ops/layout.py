"""The memory layout every envelope kernel keeps: channels_last in, channels_last out; contiguous otherwise.

For 3-D maps (N, C, D, H, W) the channels-last format is ``torch.channels_last_3d``.
"""

from typing import Sequence

import torch

__all__ = ["is_channels_last", "memory_format", "empty_like_layout"]


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-D channels_last (5-D channels_last_3d) tensor, and not also plainly contiguous."""
    layout = _CHANNELS_LAST.get(x.dim())
    try:
        return layout is not None and x.is_contiguous(memory_format=layout) and not x.is_contiguous()
    except RuntimeError:  # a tensor under vmap, which has no memory formats
        return False


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format an op's outputs for input ``x`` have."""
    return _CHANNELS_LAST[x.dim()] if is_channels_last(x) else torch.contiguous_format


def empty_like_layout(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` with ``x``'s dtype, device and memory format."""
    return torch.empty(tuple(shape), dtype=x.dtype, device=x.device, memory_format=memory_format(x))
