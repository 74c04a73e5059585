"""Sizing envelopes after training: the smallest size keeping the mass (``auto_envelope_size``), ``shrink``."""

from __future__ import annotations

from typing import Tuple, Union

from torch import nn

from .. import kernels as EF
from ..envelope import GaussianEnvelope
from .replace import refuse_scripted

__all__ = ["auto_envelope_size", "shrink"]


def auto_envelope_size(envelope: GaussianEnvelope, eps: float = 1e-2) -> Union[int, Tuple[int, ...]]:
    r"""Smallest odd size whose truncation keeps at least ``1 - eps`` of the envelope's mass.

    The mass is measured on the envelope at its current size and for its largest sigma
    (the widest channel): the central :math:`s` taps of the 1-D kernel of eq. (9) hold
    :math:`m_s`, the separable 2-D envelope :math:`m_s^2` (1-D: :math:`m_s`, 3-D: :math:`m_s^3`).
    An envelope with a sigma or a size per axis gets a size per axis: along each axis the
    smallest :math:`s_a` whose :math:`m_{s_a} \ge (1 - \epsilon)^{1/n}` for every channel, so the
    product over the n axes keeps at least :math:`1 - \epsilon` (returned as one int where all agree).
    Never larger than the current size (of each axis).
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    raw, dims, sizes = envelope.raw_sigma.detach().double(), envelope.spatial_dims, envelope.sizes
    if not envelope.per_axis and len(set(sizes)) == 1:
        size = sizes[0]
        for taps in range(1, size, 2):  # the channel keeping the least mass decides
            if float(EF.central_mass(raw, size, taps, dims).min()) >= 1 - eps:
                return taps
        return size
    share, picks = (1 - eps) ** (1 / dims), []
    for column, size in zip(EF.axis_raw_sigmas(raw, dims), sizes):
        masses = [(taps, float(EF.central_mass(column, size, taps, 1).min())) for taps in range(1, size, 2)]
        picks.append(next((taps for taps, mass in masses if mass >= share), size))
    return EF.compact_size(picks)


def shrink(module: nn.Module, envelope_size: Union[int, Tuple[int, ...], str] = 3, *, eps: float = 1e-2) -> nn.Module:
    """Set the size :math:`k_g` of every :class:`~envconv.GaussianEnvelope` inside ``module``.

    This is the paper's "shrinking envelope filter at inference" (Sec. 3.1, Table 1e):
    a model trained with ``k_g = 9`` is evaluated with ``k_g = 3`` and the same learned
    sigmas. Only the size changes; no parameter or buffer is touched. Works in place
    and returns ``module``.

    ``envelope_size`` may be a tuple with one size per spatial axis (``(1, 3, 3)``: no envelope along
    a clip's time axis). ``envelope_size="auto"`` (beyond the paper) picks a size per envelope with
    :func:`~envconv.convert.auto_envelope_size`: the smallest odd size keeping at least ``1 - eps`` of
    the envelope's mass for its widest channel (default ``eps = 1e-2``, i.e. 99%); per axis for
    envelopes with a sigma or a size per axis.

    Raises:
        TypeError: ``module`` is a TorchScript module (shrink the eager model, then trace it).
        ValueError: a size that is not odd and positive.

    Example:
        >>> from envconv import DisentangledConv2d
        >>> m = nn.Sequential(DisentangledConv2d(3, 8, 3), DisentangledConv2d(8, 8, 3))
        >>> [c.envelope.size for c in shrink(m, 3)]
        [3, 3]
        >>> m = nn.Sequential(DisentangledConv2d(3, 8, 3, envelope_size=9))  # sigma = 0.83 at init
        >>> [c.envelope.size for c in shrink(m, "auto")]  # 5 taps keep 99.7% of the mass, 3 taps 89%
        [5]
    """
    refuse_scripted(module, "shrink")
    envelopes = [m for m in module.modules() if isinstance(m, GaussianEnvelope)]
    if envelope_size != "auto":
        if not isinstance(envelope_size, (tuple, list)):
            EF.check_envelope_size(envelope_size, "envelope_size")
        for m in envelopes:  # every size checked before any envelope changes
            EF.axis_sizes(envelope_size, m.spatial_dims, f"envelope_size (for a {m.spatial_dims}-D envelope)")
    for m in envelopes:
        m.size = auto_envelope_size(m, eps) if envelope_size == "auto" else envelope_size
    return module
