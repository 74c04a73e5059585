"""State-dict I/O: reading torch files safely (``weights_only=True``) and writing them atomically.

The recipes' training checkpoints are read through :mod:`envconv.recipes.rundir`, which
builds on these; a state dict's envelopes are listed by :func:`envconv.envelopes`.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping, Union

import torch

__all__ = ["load_torch_file", "load_state_dict_file", "atomic_write_bytes", "atomic_save"]


def load_torch_file(path: Union[str, os.PathLike]) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with errors that name the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory, or not a readable torch file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; pass a checkpoint file inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err


def load_state_dict_file(path: Union[str, os.PathLike]) -> Mapping[str, torch.Tensor]:
    """Load a model state dict from ``path`` onto the CPU.

    Accepts a plain ``torch.save(model.state_dict())`` file or a checkpoint dict
    holding it under ``"model"`` (or ``"state_dict"``). Loaded with
    ``weights_only=True``: no code from the file is run.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a readable torch file or holds no state dict.
    """
    path = os.fspath(path)
    obj = load_torch_file(path)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def atomic_write_bytes(data: bytes, path: Union[str, os.PathLike]) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: the old file stays whole until then.

    The temporary file (``PATH.tmp-PID``) is removed whatever stops the write, including an
    exception raised by a signal handler; an ``OSError`` (a full disk, say) names ``path``.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None and err.errno is not None:  # "No space left on device" alone: name the file
            raise type(err)(err.errno, err.strerror, path) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj, path)`` atomically (temporary file + rename)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)
