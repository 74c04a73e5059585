"""Envelope images and the mass a shrunk envelope keeps, for learned sigmas (listed by :func:`envconv.envelopes`)."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from ... import kernels as EF
from ...listing import EnvelopeInfo

__all__ = ["envelope_kernel1d", "envelope_kernel2d", "mass_kept", "envelope_row"]


def envelope_kernel1d(sigma: float, size: int) -> np.ndarray:
    r"""The discrete 1-D envelope of eq. (9) for a given sigma: :math:`g[x] \propto \exp(-x^2 / 2\sigma^2)`.

    :func:`envconv.kernels.gaussian_kernel1d` evaluated at :math:`\tilde\sigma` of ``sigma``
    (float64). The taps sum to 1; ``sigma = 0`` gives the delta (the identity).

    Example:
        >>> envelope_kernel1d(0.0, 3).tolist()
        [0.0, 1.0, 0.0]
    """
    return EF.gaussian_kernel1d(EF.raw_from_sigma([sigma]), size)[0].numpy()


def envelope_kernel2d(sigma: float, size: Union[int, Sequence[int]]) -> np.ndarray:
    """The separable 2-D envelope g(x) g(y) (``size`` x ``size``, or a (height, width) pair; summing to 1).

    Example:
        >>> envelope_kernel2d(0.0, 3).tolist()
        [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
        >>> round(float(envelope_kernel2d(1.0, 9).sum()), 12)
        1.0
    """
    height, width = EF.axis_sizes(size, 2)
    return np.outer(envelope_kernel1d(sigma, height), envelope_kernel1d(sigma, width))


def mass_kept(sigmas: Union[np.ndarray, Sequence[float]], size: int, taps: int = 3) -> np.ndarray:
    """Per channel, the share of the ``size`` x ``size`` envelope's mass inside its central ``taps`` x ``taps``.

    This is what shrinking the envelope at inference (Table 1e) leaves out: 1 - mass_kept
    (:func:`envconv.kernels.central_mass` for given sigmas).

    Example:
        >>> [round(float(m), 3) for m in mass_kept(np.array([0.3, 0.833, 2.0]), 9, 3)]
        [1.0, 0.893, 0.319]
    """
    raw = EF.raw_from_sigma(np.atleast_1d(np.asarray(sigmas, dtype=np.float64)))
    return EF.central_mass(raw, size, taps).numpy()


def envelope_row(row: EnvelopeInfo) -> dict:
    """One envelope as the analysis report's JSON row: its fields, every sigma and the mass 3 taps keep.

    Example:
        >>> from envconv import create_model, envelopes
        >>> row = envelope_row(envelopes(create_model("small_resnet20", num_classes=10, in_chans=1))[1])
        >>> row["path"], row["channels"], round(row["mass_3_taps_mean"], 3)
        ('residual', 16, 0.893)
    """
    if row.axis_sigmas is not None:  # a sigma per axis: the product of each axis's central mass
        raw = EF.raw_from_sigma(np.asarray(row.axis_sigmas, dtype=np.float64).T)
        kept = EF.central_mass(raw, row.size, 3, row.spatial_dims).numpy()
    else:
        raw = EF.raw_from_sigma(np.atleast_1d(np.asarray(row.sigmas, dtype=np.float64)))
        kept = EF.central_mass(raw, row.size, 3, row.spatial_dims).numpy()
    return {**row.as_dict(with_sigmas=True), "mass_3_taps_mean": float(kept.mean()),
            "mass_3_taps_min": float(kept.min())}
