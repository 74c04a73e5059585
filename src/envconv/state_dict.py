"""State-dict I/O: reading torch files safely (``weights_only=True``) and writing them atomically.

The recipes' training checkpoints are read through :mod:`envconv.recipes.rundir`, which
builds on these; a state dict's envelopes are listed by :func:`envconv.envelopes`, and
:func:`envconv.load_disentangled` rebuilds a plain model's envelopes from one.

Envelope modules also keep their architecture in the state dict (:class:`ArchitectureRecord`):
an envelope's size :math:`k_g`, whether its sigma learns and its padding, a layer's order.
Loading a state dict checks them, so weights of a shrunk model (``k_g = 3``) no longer load
silently into a ``k_g = 9`` one.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, Mapping, Union

import torch

__all__ = ["ArchitectureRecord", "OrderRecord", "read_order_record", "load_torch_file", "load_state_dict_file",
           "load_weights", "atomic_write_bytes", "atomic_save"]

#: The state-dict key suffix under which a module's record is stored (PyTorch's extra state).
RECORD_KEY = "_extra_state"


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


def load_weights(source: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> Mapping[str, torch.Tensor]:
    """A state dict from a mapping, a torch file (:func:`load_state_dict_file`) or a ``.safetensors`` file.

    A directory is read as a Hugging Face ``save_pretrained`` directory: its ``model.safetensors``
    (or ``pytorch_model.bin``). Reading safetensors needs the ``safetensors`` package.

    Raises:
        FileNotFoundError: no such file, or a directory without either weights file.
        ValueError: a file that is not a readable state dict.
        ImportError: a ``.safetensors`` file without the ``safetensors`` package.
    """
    if isinstance(source, Mapping):
        return source
    path = os.fspath(source)
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                return load_weights(os.path.join(path, name))
        raise FileNotFoundError(f"{path} holds neither model.safetensors nor pytorch_model.bin (sharded "
                                f"checkpoints are not read; merge them first)")
    if not path.endswith(".safetensors"):
        return load_state_dict_file(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise ImportError(f"reading {path} needs the safetensors package (pip install safetensors)") from err
    try:
        return load_file(path, device="cpu")
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err})") from err


class ArchitectureRecord:
    """Mixin for modules whose architecture travels with their weights, as PyTorch's "extra state".

    The module writes ``get_extra_state()`` (a small int64 tensor, so safetensors and Hugging
    Face loaders carry it) under ``<prefix>._extra_state``; ``set_extra_state`` raises
    ``ValueError`` when the stored architecture differs from the module's. Loading through
    ``load_state_dict`` collects that error with the key, as PyTorch reports a shape mismatch
    (also with ``strict=False``). A missing record is a missing key, as for any tensor.
    """

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + RECORD_KEY
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)
        except ValueError as err:
            error_msgs.append(f"architecture mismatch for {key}: {err}")


def check_record(state: Any, length: int, what: str, version: int = 1) -> list:
    """The entries of a stored record (``version``, then ``length - 1`` codes), or ``ValueError``.

    A record cast to a floating dtype with the rest of a state dict (``{k: v.half() ...}``) is
    still read while its entries are whole numbers.
    """
    if not isinstance(state, torch.Tensor) or state.shape != (length,) or state.dtype == torch.bool \
            or state.is_complex():
        desc = f"{state.dtype} {tuple(state.shape)}" if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"{what}: expected an int64 record of {length} entries, got {desc}")
    raw = state.tolist()
    if not all(math.isfinite(v) for v in raw) or any(v != int(v) for v in raw):  # inf/nan: a half cast, corruption
        raise ValueError(f"{what}: record {raw} is corrupt (its entries are not finite whole numbers)")
    values = [int(v) for v in raw]
    if values[0] != version:
        raise ValueError(f"{what}: record version {values[0]} is newer than this envconv reads ({version}); "
                         f"upgrade envconv")
    return values[1:]


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


def read_order_record(state: torch.Tensor, orders) -> str:
    """The order stored in a layer's record (an index into ``orders``)."""
    (index,) = check_record(state, 2, "order record")
    if not 0 <= index < len(orders):
        raise ValueError(f"order record {state.tolist()} is corrupt (no order {index} in {orders})")
    return orders[index]


class OrderRecord(ArchitectureRecord):
    """Mixin for a layer whose record is its ``order``: ``[1, index of the order in _orders]`` (int64).

    The class sets ``_orders`` (its orders) and ``_record_kind`` (what the error calls it).
    """

    _orders: tuple
    _record_kind = "layer"

    @classmethod
    def _check_arguments(cls, order: str, envelope=None) -> None:
        """Raise for an order this layer does not have, or an envelope that is not a module (before building)."""
        if order not in cls._orders:
            raise ValueError(f"order must be one of {cls._orders}, got {order!r}")
        if envelope is not None and not isinstance(envelope, torch.nn.Module):
            raise TypeError(f"envelope must be an nn.Module, got {type(envelope).__name__}")

    def get_extra_state(self) -> torch.Tensor:
        """The record stored with the weights: ``[1, index of the order]`` (int64)."""
        return torch.tensor([1, self._orders.index(self.order)])

    def set_extra_state(self, state: torch.Tensor) -> None:
        """Check a stored record: weights of the other order raise ``ValueError``."""
        order = read_order_record(state, self._orders)
        if order != self.order:
            raise ValueError(f"the weights are of a {self._record_kind} with order={order!r}, this one has "
                             f"order={self.order!r}")
