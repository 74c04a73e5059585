"""Checkpoint I/O: atomic writes, and reading state dicts and checkpoints safely (``weights_only=True``).

Training, evaluation, probing and analysis all read checkpoints through this module; none
of them needs the training loop. A model is rebuilt from a checkpoint by
:func:`envconv.models.model_from_checkpoint`, its envelopes listed by :func:`envconv.envelopes`.
"""

from __future__ import annotations

import io
import os
from typing import Any, Dict, Mapping, Union

import torch

from ._deprecation import deprecated_names

__all__ = ["load_state_dict_file", "CHECKPOINT_KEYS", "atomic_write_bytes", "atomic_save", "load_checkpoint"]


def _safe_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with errors that name the file."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; pass a checkpoint file (e.g. {os.path.join(path, 'last.pt')})")
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
    obj = _safe_load(path)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


# --- training checkpoints -------------------------------------------------------------------------

#: Entries every training checkpoint holds.
CHECKPOINT_KEYS = ("model", "config", "epoch")


def atomic_write_bytes(data: bytes, path: Union[str, os.PathLike]) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: the old file stays whole until then."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj, path)`` atomically (temporary file + rename)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load a training checkpoint (``weights_only=True``) and check that it is one.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt, not a torch file, or lacks :data:`CHECKPOINT_KEYS`.
    """
    path = os.fspath(path)
    ckpt = _safe_load(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, Mapping) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not an envconv training checkpoint (missing {missing}); "
                         f"for a bare state dict use `envconv envelopes`")
    ckpt = dict(ckpt)
    from .config import validate_config

    try:  # a foreign or hand-made config must fail here, naming the file, not deep inside a command
        ckpt["config"] = validate_config(ckpt["config"]) if isinstance(ckpt["config"], Mapping) else None
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: its config is not a valid envconv config ({err})") from err
    if ckpt["config"] is None or not isinstance(ckpt["epoch"], int):
        raise ValueError(f"{path}: its config or epoch is not an envconv training checkpoint's")
    return ckpt


# Moved; kept for one release.
__getattr__ = deprecated_names(__name__, {
    "model_from_checkpoint": ("envconv.models.factory", "model_from_checkpoint"),
    "envelope_sigmas_from_file": ("envconv._deprecation", "envelope_sigmas_from_file"),
})
