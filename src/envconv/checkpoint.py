"""Checkpoint I/O: atomic writes, and reading state dicts and checkpoints safely (``weights_only=True``).

Training, evaluation, probing and analysis all read checkpoints through this module; none
of them needs the training loop to get a model back.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import Any, Dict, Mapping, Union

import torch

from .convert import layer_name
from .functional import sigma2_from_raw

__all__ = ["load_state_dict_file", "envelope_sigmas_from_file", "CHECKPOINT_KEYS", "atomic_write_bytes", "atomic_save",
           "load_checkpoint", "model_from_checkpoint"]

_RAW_SIGMA = "raw_sigma"


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


def envelope_sigmas_from_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Per-layer sigmas stored in a state dict file, keyed by the owning layer's name.

    Every entry whose key ends in ``raw_sigma`` is an envelope; its sigma is
    ``sqrt(softplus(raw_sigma))``. ``"layer2.0.conv2.envelope.raw_sigma"`` is reported
    as ``"layer2.0.conv2"``.
    """
    sigmas: Dict[str, torch.Tensor] = OrderedDict()
    for key, value in load_state_dict_file(path).items():
        if key == _RAW_SIGMA or key.endswith("." + _RAW_SIGMA):
            sigmas[layer_name(key[: -len(_RAW_SIGMA)].rstrip("."))] = sigma2_from_raw(value.double()).sqrt()
    return sigmas


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


def model_from_checkpoint(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"):
    """Rebuild the model of a training checkpoint from its config and load its weights.

    Returns:
        ``(model, checkpoint)``: the model in eval mode on ``device``, and the checkpoint dict.
    """
    from .models.factory import create_model_from_config

    ckpt = load_checkpoint(path)
    model = create_model_from_config(ckpt["config"]["model"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise ValueError(f"{os.fspath(path)}: the weights do not fit the model its config describes ({err})") from err
    return model.to(device).eval(), ckpt
