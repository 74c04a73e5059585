"""envconv.functional against numpy/scipy references, finite differences and eq. (7)-(8)."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import reference as ref
from envconv import functional as EF
from envconv.ops import gaussian_envelope


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


@pytest.mark.parametrize("mode", EF.PADDING_MODES)
@pytest.mark.parametrize("size", [1, 3, 5, 9])
def test_envelope_matches_scipy(mode, size):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(2, 4, 13, 11, generator=g, dtype=torch.float64)
    raw = torch.tensor([-2.0, 0.0, 1.3, 4.0], dtype=torch.float64)
    out = gaussian_envelope(x, raw, size, mode)
    np.testing.assert_allclose(out.numpy(), ref.envelope(x.numpy(), raw.numpy(), size, mode), rtol=0, atol=1e-10)


def test_envelope_shared_sigma_and_kernel_larger_than_image():
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    raw = torch.tensor([0.9], dtype=torch.float64)
    out = gaussian_envelope(x, raw, 11)  # r = 5 > H, W: zero padding still exact
    np.testing.assert_allclose(out.numpy(), ref.envelope(x.numpy(), raw.numpy(), 11), atol=1e-12)


def test_envelope_is_separable_2d_gaussian():
    # The two 1-D passes equal one 2-D correlation with the outer-product kernel.
    x = np.random.default_rng(0).standard_normal((1, 1, 12, 12))
    raw = np.array([0.4])
    k = ref.kernel1d(raw, 7)[0]
    expected = ndimage.correlate(x[0, 0], np.outer(k, k), mode="constant")
    out = gaussian_envelope(torch.from_numpy(x), torch.from_numpy(raw), 7)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-12)


def test_gradcheck_input_and_raw_sigma():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    raw = torch.tensor([-1.0, 0.0, 1.5], dtype=torch.float64, requires_grad=True)
    for mode in EF.PADDING_MODES:
        assert torch.autograd.gradcheck(lambda a, b, m=mode: gaussian_envelope(a, b, 5, m), (x, raw))
    shared = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gaussian_envelope(a, b, 9), (x, shared))


def _eq8_sigma_gradient(x, raw, upstream, size):
    """dl/dsigma_c = sum_{x,y} [(dg/dsigma_c) * X_c] * dl/dXbar_c (eq. (8)), in numpy.

    g_j = exp(-j^2/2s^2)/Z gives dg_j/dsigma = g_j (j^2 - sum_i g_i i^2) / sigma^3 for the
    1-D kernel; the 2-D envelope is g g^T, so dG/dsigma = g' g^T + g g'^T.
    """
    r = size // 2
    j = np.arange(-r, r + 1, dtype=np.float64)
    grads = []
    for c, rc in enumerate(raw):
        sigma = math.sqrt(ref.sigma2(rc))
        g = ref.kernel1d([rc], size)[0]
        dg = g * (j**2 - (g * j**2).sum()) / sigma**3
        dG = np.outer(dg, g) + np.outer(g, dg)
        saliency = np.stack([ndimage.correlate(x[n, c], dG, mode="constant") for n in range(x.shape[0])])
        grads.append((saliency * upstream[:, c]).sum())
    return np.array(grads)


def _eq7_input_gradient(upstream, raw, size):
    """dl/dX_c = g(sigma_c) * dl/dXbar_c (eq. (7)); the kernel is symmetric."""
    return ref.envelope(upstream, raw, size, "zeros")


def test_gradients_agree_with_eq7_and_eq8():
    rng = np.random.default_rng(3)
    size = 9
    x = rng.standard_normal((2, 3, 10, 12))
    upstream = rng.standard_normal(x.shape)  # l = sum(upstream * Xbar), so dl/dXbar = upstream
    raw = np.array([-0.7, 0.0, 1.2])
    xt = torch.tensor(x, requires_grad=True)
    rt = torch.tensor(raw, requires_grad=True)
    loss = (gaussian_envelope(xt, rt, size) * torch.from_numpy(upstream)).sum()
    loss.backward()
    # autograd gives dl/draw; the chain rule through sigma = sqrt(softplus(raw)) gives dl/dsigma
    sigma = np.sqrt(ref.sigma2(raw))
    dsigma_draw = (1 / (1 + np.exp(-raw))) / (2 * sigma)
    np.testing.assert_allclose(rt.grad.numpy() / dsigma_draw, _eq8_sigma_gradient(x, raw, upstream, size), rtol=1e-10)
    np.testing.assert_allclose(xt.grad.numpy(), _eq7_input_gradient(upstream, raw, size), atol=1e-12)


def test_delta_limit_is_exact_identity():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for raw in (-100.0, -30.0, float("-inf")):
        out = gaussian_envelope(x, torch.full((3,), raw, dtype=torch.float64), 9)
        assert torch.equal(out, x)


def test_large_sigma_limit_is_box_filter():
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    k = EF.gaussian_kernel1d(torch.tensor([1e9], dtype=torch.float64), 5)
    np.testing.assert_allclose(k.numpy(), 0.2, atol=1e-9)
    out = gaussian_envelope(x, torch.tensor([1e9, 1e9], dtype=torch.float64), 5)
    box = ndimage.uniform_filter(x.numpy(), size=(1, 1, 5, 5), mode="constant")
    np.testing.assert_allclose(out.numpy(), box, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_forward_and_backward_over_raw_range(dtype):
    x = torch.randn(2, 41, 9, 9, dtype=dtype, requires_grad=True)
    raw = torch.linspace(-100, 100, 41, dtype=dtype).requires_grad_()
    out = gaussian_envelope(x, raw, 9)
    (out * torch.randn_like(out)).sum().backward()
    for t in (out, x.grad, raw.grad):
        assert torch.isfinite(t).all()
    # kernels stay normalised at both ends
    k = EF.gaussian_kernel1d(raw.detach(), 9)
    torch.testing.assert_close(k.sum(1), torch.ones(41, dtype=dtype))


@pytest.mark.parametrize("channels_last", [False, True])
def test_autocast_leaves_the_envelope_in_its_input_dtype(channels_last):
    """Like pooling, the envelope computes in its input's dtype under autocast; bfloat16 input stays close."""
    x = torch.randn(2, 4, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    raw = torch.tensor([-1.0, 0.0, 1.0, 2.0], requires_grad=True)
    expected = gaussian_envelope(x, raw, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gaussian_envelope(x, raw, 9).dtype == torch.float32
        out = gaussian_envelope(x.bfloat16(), raw, 9)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=2e-2)
    out.float().sum().backward()
    assert raw.grad.dtype == torch.float32 and torch.isfinite(raw.grad).all()


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


def test_bad_arguments_name_the_problem():
    x = torch.randn(1, 3, 8, 8)
    raw = torch.zeros(3)
    with pytest.raises(ValueError, match="odd"):
        gaussian_envelope(x, raw, 4)
    with pytest.raises(ValueError, match="odd positive"):
        gaussian_envelope(x, raw, -1)
    with pytest.raises(TypeError, match="size"):
        gaussian_envelope(x, raw, 3.0)
    with pytest.raises(ValueError, match="padding_mode"):
        gaussian_envelope(x, raw, 3, "same")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        gaussian_envelope(x[0], raw, 3)
    with pytest.raises(ValueError, match="raw_sigma"):
        gaussian_envelope(x, torch.zeros(2), 3)
    with pytest.raises(ValueError, match="reflect"):
        gaussian_envelope(torch.randn(1, 3, 4, 8), raw, 9, "reflect")
    with pytest.raises(ValueError, match="circular"):
        gaussian_envelope(torch.randn(1, 3, 3, 8), raw, 9, "circular")
    # the largest sizes each mode accepts still match scipy
    small = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    raw64 = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    for mode, size in (("reflect", 7), ("circular", 9)):
        np.testing.assert_allclose(
            gaussian_envelope(small, raw64, size, mode).numpy(),
            ref.envelope(small.numpy(), raw64.numpy(), size, mode),
            atol=1e-10,
        )


def test_kernel_derivative_matches_autograd():
    raw = torch.tensor([-30.0, -2.0, 0.0, 0.7, 5.0, 40.0], dtype=torch.float64)
    for size in (1, 3, 9):
        want = torch.autograd.functional.jacobian(lambda r, s=size: EF.gaussian_kernel1d(r, s), raw)  # (C, k, C)
        diagonal = torch.stack([want[c, :, c] for c in range(raw.numel())])
        torch.testing.assert_close(EF.gaussian_kernel1d_derivative(raw, size), diagonal, rtol=1e-12, atol=1e-15)
