"""Reading state dicts and checkpoints from disk, safely (``weights_only=True``, no pickle code)."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, Mapping, Union

import torch

from .convert import layer_name
from .functional import sigma2_from_raw

__all__ = ["load_state_dict_file", "envelope_sigmas_from_file"]

_RAW_SIGMA = "raw_sigma"


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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
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
