"""Public names that moved or were merged, kept working for one release with a ``DeprecationWarning``.

A module lists its old names with :func:`deprecated_names`; the old functions whose
results differ from their replacements' are written here once, on top of the new API.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Callable, Dict, List, Mapping, Tuple, Union

import torch

__all__ = ["deprecated_names"]

#: The replacement each old name's warning points to.
_REPLACEMENT = {
    "envelope_sigmas": "envconv.envelopes(model)",
    "layer_sigmas": "envconv.envelopes(model)",
    "envelope_sigmas_from_file": "envconv.envelopes(envconv.checkpoint.load_state_dict_file(path))",
}


def deprecated_names(module: str, table: Mapping[str, Tuple[str, str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` that serves each old name from ``table[name] = (module, attribute)``, warning."""

    def __getattr__(name: str) -> object:
        if name not in table:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        where, attribute = table[name]
        new = _REPLACEMENT.get(attribute, f"{where}.{attribute}")
        warnings.warn(f"{module}.{name} is deprecated and will be removed in the next release; use {new}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(where), attribute)

    return __getattr__


def envelope_sigmas(model: torch.nn.Module) -> Dict[str, List[float]]:
    """Old ``envconv.convert.envelope_sigmas``: every channel's sigma per layer."""
    from .listing import envelopes

    return {row.name: list(row.sigmas) for row in envelopes(model)}


def layer_sigmas(model: torch.nn.Module) -> list:
    """Old ``envconv.analysis.layer_sigmas``: now :func:`envconv.envelopes`."""
    from .listing import envelopes

    return envelopes(model)


def envelope_sigmas_from_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Old ``envconv.checkpoint.envelope_sigmas_from_file``: sigmas per layer of a state dict file."""
    from .checkpoint import load_state_dict_file
    from .listing import envelopes

    return {row.name: torch.tensor(row.sigmas, dtype=torch.float64)
            for row in envelopes(load_state_dict_file(path))}
