"""Process set-up: the device, and DistributedDataParallel through ``torchrun``'s environment.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a plain
``python`` start has none and runs as a single process. The backend is NCCL on CUDA and
gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "pick_device", "setup", "barrier", "cleanup", "world_size", "all_reduce_sum"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs; the others only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's CUDA device when there is one, else the CPU; or an explicit device."""
    if preference == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as err:
        raise ValueError(f"train.device {preference!r} is not a device (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={preference!r} but CUDA is not available; use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def setup(device_preference: str = "auto") -> DistributedContext:
    """Join the process group when started by torchrun; returns this process's context."""
    world, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = pick_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistributedContext(rank=rank, world=world, local_rank=local_rank, device=device)


def barrier() -> None:
    """Wait for every process (a no-op for one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """The number of processes (1 without an initialised process group).

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a no-op for one process); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
