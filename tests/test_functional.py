"""envconv.functional against numpy/scipy references, finite differences and eq. (7)-(8)."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import envconv
import reference as ref
from envconv import kernels as EF
from envconv.functional import gaussian_envelope


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
def test_autocast_gives_the_envelope_the_dtype_a_convolution_gets(channels_last):
    """The envelope is a depth-wise convolution: under autocast it returns what F.conv2d would, close to fp32."""
    x = torch.randn(2, 4, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    raw = torch.tensor([-1.0, 0.0, 1.0, 2.0], requires_grad=True)
    expected = gaussian_envelope(x, raw, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            conv_dtype = torch.nn.functional.conv2d(x.to(dtype), torch.ones(4, 1, 3, 3, dtype=dtype), groups=4).dtype
            assert gaussian_envelope(x.to(dtype), raw, 9).dtype == conv_dtype
        out = gaussian_envelope(x, raw, 9)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=2e-2)
    out.float().sum().backward()
    assert raw.grad.dtype == torch.float32 and torch.isfinite(raw.grad).all()


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
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(C, H, W\), got 2 dims"):
        gaussian_envelope(x[0, 0], raw, 3)
    with pytest.raises(ValueError, match="the envelope has 4 channels but the input has 3"):
        gaussian_envelope(x, torch.zeros(1), 3, channels=4)
    with pytest.raises(ValueError, match="impl must be one of"):
        gaussian_envelope(x, raw, 3, impl="fastest")
    w = torch.randn(4, 3, 3, 3)
    for padding in ("same", (1, -1), (1, 1, 1)):  # the op takes numeric padding only: the layers pad "same"
        with pytest.raises(ValueError, match=r"padding must be a non-negative int or 2 of them.*DisentangledConv2d"):
            envconv.functional.envelope_conv2d(x, raw, 5, w, padding=padding)
    # unbatched input, as F.conv2d takes it
    torch.testing.assert_close(gaussian_envelope(x[0], raw, 5), gaussian_envelope(x, raw, 5)[0])
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


def test_under_autocast_the_functional_the_op_and_the_layer_return_what_f_conv2d_returns():
    torch.manual_seed(0)
    layer = envconv.DisentangledConv2d(4, 6, 3, padding=1, bias=True)
    x = torch.randn(2, 4, 12, 12)
    raw = layer.envelope.raw_sigma
    expected = torch.nn.functional.conv2d(gaussian_envelope(x, raw, 9), layer.weight, layer.bias, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1).dtype
        outs = {"functional": envconv.functional.envelope_conv2d(x, raw, 9, layer.weight, layer.bias, padding=1),
                "op": torch.ops.envconv.envelope_conv(x, raw, layer.weight, layer.bias, 9, [1, 1], "zeros", "auto",
                                                        [1, 1], [1, 1], [1, 1], 1),
                "layer": layer(x)}
    assert want == torch.bfloat16
    for name, out in outs.items():
        assert out.dtype == want, name
        torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05, msg=name)
    outs["layer"].float().sum().backward()
    assert raw.grad.dtype == torch.float32 and torch.isfinite(raw.grad).all()


def test_the_functionals_equal_the_modules():
    torch.manual_seed(0)
    env = envconv.GaussianEnvelope(4, 7)
    conv = envconv.DisentangledConv2d(4, 6, 3, stride=2, padding=1, envelope_size=7)
    with torch.no_grad():
        env.raw_sigma.normal_()
        conv.envelope.raw_sigma.normal_()
    x = torch.randn(2, 4, 11, 11)
    assert torch.equal(env(x), envconv.functional.gaussian_envelope(x, env.raw_sigma, 7))
    want = envconv.functional.envelope_conv2d(x, conv.envelope.raw_sigma, 7, conv.weight, conv.bias, stride=2,
                                              padding=1)
    assert torch.equal(conv(x), want)
    assert envconv.gaussian_envelope is envconv.functional.gaussian_envelope
    assert envconv.envelope_conv2d is envconv.functional.envelope_conv2d
