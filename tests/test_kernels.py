"""envconv.kernels: the discrete Gaussian of eq. (9), its derivative and parameterisation, against references."""

import math

import numpy as np
import pytest
import torch

import reference as ref
from envconv import kernels as EF


@pytest.mark.parametrize("size", [1, 3, 5, 9, 15])
def test_kernel1d_matches_eq9(size):
    raw = torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.5, 8.0], dtype=torch.float64)
    k = EF.gaussian_kernel1d(raw, size)
    np.testing.assert_allclose(k.numpy(), ref.kernel1d(raw.numpy(), size), rtol=0, atol=1e-14)
    np.testing.assert_allclose(k.sum(1).numpy(), 1.0, atol=1e-14)


def test_kernel1d_hand_values():
    # raw = 0: sigma^2 = log 2; size 3: weights proportional to (e^{-1/(2 log 2)}, 1, e^{-1/(2 log 2)})
    a = math.exp(-1 / (2 * math.log(2)))
    expected = [a / (1 + 2 * a), 1 / (1 + 2 * a), a / (1 + 2 * a)]
    k = EF.gaussian_kernel1d(torch.zeros(1, dtype=torch.float64), 3)
    assert k[0].tolist() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(
    "sigma", [0.0, 1e-3, 0.3, 0.7, 1.0, 2.0, 5.5, 7.0, 20.0],
)
def test_raw_from_sigma_inverts_softplus(sigma):
    raw = EF.raw_from_sigma(sigma)
    assert math.sqrt(ref.sigma2(float(raw))) == pytest.approx(sigma, rel=1e-12, abs=1e-300)


def test_raw_from_sigma_rejects_negative_and_nan():
    for bad in (-0.1, float("nan"), float("inf"), [0.5, -1.0]):
        with pytest.raises(ValueError, match="sigma"):
            EF.raw_from_sigma(bad)


def test_kernel_derivative_matches_autograd():
    raw = torch.tensor([-30.0, -2.0, 0.0, 0.7, 5.0, 40.0], dtype=torch.float64)
    for size in (1, 3, 9):
        want = torch.autograd.functional.jacobian(lambda r, s=size: EF.gaussian_kernel1d(r, s), raw)  # (C, k, C)
        diagonal = torch.stack([want[c, :, c] for c in range(raw.numel())])
        torch.testing.assert_close(EF.gaussian_kernel1d_derivative(raw, size), diagonal, rtol=1e-12, atol=1e-15)


def test_kernel_second_derivative_matches_autograd():
    raw = torch.tensor([-30.0, -2.0, 0.0, 0.7, 5.0, 40.0], dtype=torch.float64)
    for size in (1, 3, 9):
        # the Hessian of each tap in its own raw sigma, by autograd through eq. (9)
        want = torch.stack([torch.stack([torch.autograd.functional.hessian(
            lambda r, s=size, c=c, i=i: EF.gaussian_kernel1d(r.view(1), s)[0, i], raw[c]) for i in range(size)])
            for c in range(raw.numel())])
        torch.testing.assert_close(EF.gaussian_kernel1d_second_derivative(raw, size), want, rtol=1e-10, atol=1e-14)
