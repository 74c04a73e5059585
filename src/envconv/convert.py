"""Whole-model operations on envelopes: shrinking them and listing what they learned."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List

from torch import nn

from .envelope import GaussianEnvelope
from .functional import check_envelope_size

__all__ = ["EnvelopeInfo", "shrink", "envelopes", "layer_name"]


def layer_name(envelope_name: str) -> str:
    """Name of the layer that owns an envelope: ``"layer2.0.conv2.envelope"`` -> ``"layer2.0.conv2"``.

    A free-standing envelope keeps its own name; the root module is ``"(root)"``.
    """
    name = "" if envelope_name == "envelope" else envelope_name.removesuffix(".envelope")
    return name or "(root)"


def shrink(module: nn.Module, size: int = 3) -> nn.Module:
    """Set the size :math:`k_g` of every :class:`GaussianEnvelope` inside ``module``.

    This is the paper's "shrinking envelope filter at inference" (Sec. 3.1, Table 1e):
    a model trained with ``k_g = 9`` is evaluated with ``k_g = 3`` and the same learned
    sigmas. Only the size changes; no parameter or buffer is touched. Works in place
    and returns ``module``.

    Example:
        >>> from envconv import DisentangledConv2d
        >>> m = nn.Sequential(DisentangledConv2d(3, 8, 3), DisentangledConv2d(8, 8, 3))
        >>> [c.envelope.size for c in shrink(m, 3)]
        [3, 3]
    """
    check_envelope_size(size)
    for m in module.modules():
        if isinstance(m, GaussianEnvelope):
            m.size = size
    return module


@dataclass(frozen=True)
class EnvelopeInfo:
    """One envelope of a model: where it is and what sigma it learned."""

    name: str
    channels: int
    size: int
    shared: bool
    learnable: bool
    sigma_mean: float
    sigma_min: float
    sigma_max: float

    def as_dict(self) -> dict:
        return asdict(self)


def envelopes(model: nn.Module) -> List[EnvelopeInfo]:
    """List every :class:`GaussianEnvelope` in ``model`` with its sigma statistics.

    The name is that of the module owning the envelope (e.g. ``"layer2.0.conv2"``
    for a :class:`DisentangledConv2d`), in ``named_modules`` order.
    """
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, GaussianEnvelope):
            sigma = m.sigma.detach().double()
            rows.append(
                EnvelopeInfo(
                    name=layer_name(name),
                    channels=m.channels,
                    size=m.size,
                    shared=m.shared,
                    learnable=m.learnable,
                    sigma_mean=float(sigma.mean()),
                    sigma_min=float(sigma.min()),
                    sigma_max=float(sigma.max()),
                )
            )
    return rows
