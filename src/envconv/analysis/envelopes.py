"""What the envelopes learned: every layer's sigmas by path, the 2-D envelope, the mass 3 taps keep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
from torch import nn

from ..convert import SHORTCUT_NAMES, layer_name, stem_name
from ..envelope import GaussianEnvelope

__all__ = ["LayerSigmas", "layer_sigmas", "envelope_kernel1d", "envelope_kernel2d", "mass_kept"]


@dataclass
class LayerSigmas:
    """The learned sigma of every channel of one envelope.

    Attributes:
        name: the layer owning the envelope (as in :func:`envconv.envelopes`).
        path: ``"stem"``, ``"identity"`` (the shortcut's 1x1 convolution) or ``"residual"``.
        size: the envelope's number of taps k_g.
        sigmas: one sigma per channel (a single value for a shared sigma).
    """

    name: str
    path: str
    size: int
    sigmas: np.ndarray

    def as_dict(self) -> dict:
        s = self.sigmas
        return {"name": self.name, "path": self.path, "size": self.size, "channels": int(s.size),
                "sigma_mean": float(s.mean()), "sigma_min": float(s.min()), "sigma_max": float(s.max()),
                "mass_3_taps_mean": float(mass_kept(s, self.size, 3).mean()),
                "mass_3_taps_min": float(mass_kept(s, self.size, 3).min()), "sigmas": s.tolist()}


def _path(name: str, stem: str) -> str:
    if stem == name or stem.startswith(name + "."):  # the stem conv may sit inside the converted layer
        return "stem"
    return "identity" if any(part in SHORTCUT_NAMES for part in name.split(".")) else "residual"


def layer_sigmas(model: nn.Module) -> List[LayerSigmas]:
    """Every :class:`GaussianEnvelope` of ``model`` in ``named_modules`` order (empty: no envelopes).

    Example:
        >>> from envconv import create_model
        >>> model = create_model("small_resnet20", num_classes=10, in_chans=1)
        >>> [(layer.name, layer.path, layer.sigmas.size) for layer in layer_sigmas(model)][:3]
        [('conv1', 'stem', 1), ('layer2.0.conv1', 'residual', 16), ('layer2.0.downsample.0', 'identity', 16)]
    """
    stem = stem_name(model) if any(isinstance(m, nn.Conv2d) for m in model.modules()) else ""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, GaussianEnvelope):
            owner = layer_name(name)
            rows.append(LayerSigmas(owner, _path(owner, stem), m.size,
                                    m.sigma.detach().double().cpu().numpy().reshape(-1)))
    return rows


def envelope_kernel1d(sigma: float, size: int) -> np.ndarray:
    r"""The discrete 1-D envelope of eq. (9): :math:`g[x] \propto \exp(-x^2 / 2\sigma^2)`, ``size`` taps.

    The taps sum to 1; ``sigma <= 0`` gives the delta (the identity).
    """
    x = np.arange(size) - size // 2
    if sigma <= 0:
        return (x == 0).astype(np.float64)
    logits = -(x.astype(np.float64) ** 2) / (2.0 * sigma ** 2)
    g = np.exp(logits - logits.max())
    return g / g.sum()


def envelope_kernel2d(sigma: float, size: int) -> np.ndarray:
    """The separable 2-D envelope g(x) g(y) (``size`` x ``size``, summing to 1)."""
    g = envelope_kernel1d(sigma, size)
    return np.outer(g, g)


def mass_kept(sigmas: np.ndarray, size: int, taps: int = 3) -> np.ndarray:
    """Per channel, the share of the ``size`` x ``size`` envelope's mass inside its central ``taps`` x ``taps``.

    This is what shrinking the envelope at inference (Table 1e) leaves out: 1 - mass_kept.

    Example:
        >>> [round(float(m), 3) for m in mass_kept(np.array([0.3, 0.833, 2.0]), 9, 3)]
        [1.0, 0.893, 0.319]
    """
    taps = min(taps, size)
    lo = size // 2 - taps // 2
    return np.array([envelope_kernel1d(float(s), size)[lo:lo + taps].sum() ** 2 for s in np.atleast_1d(sigmas)])
