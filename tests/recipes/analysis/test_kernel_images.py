import math

import numpy as np
import pytest

from envconv import create_model, envelopes
from envconv.recipes.analysis import envelope_kernel1d, envelope_kernel2d, envelope_row, mass_kept


def test_kernels_are_the_normalised_gaussian():
    g = envelope_kernel1d(1.0, 5)
    z = 1 + 2 * math.exp(-0.5) + 2 * math.exp(-2)
    np.testing.assert_allclose(g, np.array([math.exp(-2), math.exp(-0.5), 1, math.exp(-0.5), math.exp(-2)]) / z)
    np.testing.assert_allclose(envelope_kernel2d(1.0, 5), np.outer(g, g))
    np.testing.assert_array_equal(envelope_kernel1d(0.0, 3), [0, 1, 0])


def test_mass_kept_by_three_taps_is_the_central_square():
    z = 1 + 2 * math.exp(-0.5) + 2 * math.exp(-2) + 2 * math.exp(-4.5) + 2 * math.exp(-8)   # sigma 1, 9 taps
    expected = ((1 + 2 * math.exp(-0.5)) / z) ** 2
    np.testing.assert_allclose(mass_kept(np.array([1.0, 1e-3]), 9, 3), [expected, 1.0], rtol=1e-12)


def test_envelope_row_adds_the_three_tap_mass():
    row = envelopes(create_model("small_resnet20", num_classes=10, in_chans=1))[1]
    out = envelope_row(row)
    assert out["mass_3_taps_mean"] == pytest.approx(float(mass_kept(row.sigmas, 9, 3).mean()))
    assert out["sigmas"] == list(row.sigmas) and out["path"] == "residual"
