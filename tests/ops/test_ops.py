"""Every implementation of the envconv ops against the numpy/scipy reference, forward and backward.

The Triton kernels run through Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set by
``tests/conftest.py`` before triton compiles anything), with small shapes: the interpreter is slow.
"""

import itertools

import numpy as np
import pytest
import torch

import reference
from envconv import functional
from envconv import kernels as EF
from envconv.ops import cpu, dispatch

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}
# the raw-sigma reference is a central difference (error about 1e-9 relative)
SIGMA_TOL = {torch.float64: dict(rtol=1e-6, atol=1e-7), torch.float32: dict(rtol=1e-4, atol=1e-4)}
STRIDES = [(1, 1), (2, 2), (2, 1)]


def triton_ok():
    return dispatch.triton_unsupported(torch.zeros(1, 1, 1, 1), "zeros") is None


def needs(impl, padding_mode="zeros"):
    if impl == "cpp" and not cpu.available():
        pytest.skip(f"the C++ kernel is not available: {cpu.unavailable_reason()}")
    if impl == "triton" and not triton_ok():
        pytest.skip("triton is not importable here")
    if impl in ("cpp", "triton") and padding_mode != "zeros":
        pytest.skip("the kernel pads with zeros (forcing it otherwise raises: test_forced_impl_refuses_...)")


def inputs(channels, dtype, channels_last, shape=(2, 7, 9), shared=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape[0], channels, *shape[1:], dtype=dtype, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    raw = torch.randn(1 if shared else channels, dtype=dtype, generator=gen) * 0.8
    return x.requires_grad_(), raw.requires_grad_()


def check_against_reference(impl, dtype, channels_last, stride, size, padding_mode, channels, shared=False):
    x, raw = inputs(channels, dtype, channels_last, shared=shared)
    y = functional.gaussian_envelope(x, raw, size, padding_mode, stride, impl)
    want = reference.envelope_strided(x.detach().numpy(), raw.detach().numpy(), size, padding_mode, stride)
    torch.testing.assert_close(y, torch.from_numpy(want).to(dtype), **TOL[dtype])
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    gy = torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    gx, graw = torch.autograd.grad(y, (x, raw), gy)
    want_gx, want_graw = reference.envelope_vjp(x.detach().numpy(), raw.detach().numpy(), size, gy.numpy(),
                                                padding_mode, stride)
    torch.testing.assert_close(gx, torch.from_numpy(want_gx).to(dtype), **TOL[dtype])
    torch.testing.assert_close(graw, torch.from_numpy(want_graw).to(dtype), **SIGMA_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("impl, channels_last, stride, size, padding_mode", [
    case for case in itertools.product(["separable", "full", "cpp", "auto"], [False, True], STRIDES, [1, 3, 9],
                                       ["zeros", "reflect", "replicate", "circular"])
    if case[0] != "cpp" or case[4] == "zeros"])  # the C++ kernel pads with zeros (forcing it otherwise raises)
def test_cpu_impls_match_reference(dtype, impl, channels_last, stride, size, padding_mode):
    needs(impl, padding_mode)
    for channels in (3, 17):  # the C++ kernel's two loops: pass per axis below 16 channels, ring above
        check_against_reference(impl, dtype, channels_last, stride, size, padding_mode, channels)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last, stride, size", list(itertools.product([False, True], STRIDES, [3, 5])))
def test_triton_matches_reference(dtype, channels_last, stride, size):
    needs("triton")
    check_against_reference("triton", dtype, channels_last, stride, size, "zeros", channels=5)


@pytest.mark.parametrize("impl", ["separable", "cpp", "triton"])
def test_shared_sigma_matches_reference(impl):
    needs(impl)
    check_against_reference(impl, torch.float64, True, (2, 2), 5, "zeros", channels=4, shared=True)


def test_triton_bfloat16_accumulates_in_float32():
    needs("triton")
    x, raw = inputs(6, torch.float32, True, shape=(1, 8, 8))
    y16 = functional.gaussian_envelope(x.detach().bfloat16(), raw.detach(), 5, impl="triton")
    assert y16.dtype == torch.bfloat16
    want = reference.envelope_strided(x.detach().bfloat16().double().numpy(), raw.detach().numpy(), 5)
    # each of the two passes sums in float32 and rounds its result to bfloat16 (8 bits): two roundings
    eps = 2 ** -8
    torch.testing.assert_close(y16.double(), torch.from_numpy(want), rtol=2 * eps, atol=2 * eps * 4)


@pytest.mark.parametrize("impl", ["separable", "cpp", "triton"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(impl, channels_last):
    needs(impl)
    # small for the Triton interpreter: opcheck runs the op a dozen times
    shape, size = ((1, 4, 5), 3) if impl == "triton" else ((2, 6, 5), 5)
    for dtype, stride in itertools.product((torch.float32, torch.float64), ([1, 1], [2, 2])):
        x, raw = inputs(2, dtype, channels_last, shape=shape)
        torch.library.opcheck(torch.ops.envconv.envelope.default, (x, raw, size, stride, "zeros", impl))
        gy = torch.randn(x.shape[0], 2, (shape[1] - 1) // stride[0] + 1, (shape[2] - 1) // stride[1] + 1,
                         dtype=dtype)
        torch.library.opcheck(torch.ops.envconv.envelope_backward.default,
                              (gy, x.detach(), raw.detach(), size, stride, "zeros", impl, True, True))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [3, 8])  # 3: the stem's forward-conv backward
def test_opcheck_envelope_conv2d(channels_last, channels):
    for dtype, env_stride in itertools.product((torch.float32, torch.float64), ([1, 1], [2, 2])):
        x, raw = inputs(channels, dtype, channels_last, shape=(2, 6, 7))
        w = torch.randn(4, channels, 3, 3, dtype=dtype, requires_grad=True)
        b = torch.randn(4, dtype=dtype, requires_grad=True)
        torch.library.opcheck(torch.ops.envconv.envelope_conv.default,
                              (x, raw, w, b, 5, env_stride, "zeros", "auto", [2, 1], [1, 1], [1, 1], 1))


def test_envelope_conv2d_gradients_match_reference_in_every_route():
    """Input+sigma gradients, and the stem route (sigma only, few channels), against numpy."""
    for channels, need_x in ((3, False), (3, True), (9, True), (9, False)):
        x, raw = inputs(channels, torch.float64, False, shape=(2, 8, 7))
        x.requires_grad_(need_x)
        w = torch.randn(5, channels, 3, 3, dtype=torch.float64, requires_grad=True)
        y = functional.envelope_conv2d(x, raw, 5, w, stride=2, padding=1)
        gy = torch.randn_like(y)
        grads = torch.autograd.grad(y, [t for t in (x, raw, w) if t.requires_grad], gy)
        smoothed = torch.from_numpy(reference.envelope_strided(x.detach().numpy(), raw.detach().numpy(), 5))
        smoothed.requires_grad_()
        w_ref = w.detach().clone().requires_grad_()
        want_y = torch.nn.functional.conv2d(smoothed, w_ref, stride=2, padding=1)
        torch.testing.assert_close(y, want_y, **TOL[torch.float64])
        g_smoothed, want_gw = torch.autograd.grad(want_y, (smoothed, w_ref), gy)  # the conv's own gradients
        want_gx, want_graw = reference.envelope_vjp(x.detach().numpy(), raw.detach().numpy(), 5,
                                                    g_smoothed.numpy())
        got = list(grads)
        if need_x:
            torch.testing.assert_close(got.pop(0), torch.from_numpy(want_gx), **TOL[torch.float64])
        torch.testing.assert_close(got[0], torch.from_numpy(want_graw), **SIGMA_TOL[torch.float64])
        torch.testing.assert_close(got[1], want_gw, **TOL[torch.float64])


# ---- edge cases: a frozen sigma, the reference itself, an empty batch, the two C++ loops -----------------------

def test_frozen_sigma_stem_with_the_fused_kernel_trains_its_weight():
    needs("cpp")
    from envconv import DisentangledConv2d

    torch.manual_seed(0)
    conv = DisentangledConv2d(3, 8, 7, stride=2, padding=3, bias=False).double()
    conv.envelope.raw_sigma.requires_grad_(False)
    conv.envelope.impl = "cpp"
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    conv(x).square().sum().backward()
    smoothed = torch.from_numpy(reference.envelope_strided(x.numpy(), conv.envelope.raw_sigma.numpy(), 9))
    w = conv.weight.detach().clone().requires_grad_()
    torch.nn.functional.conv2d(smoothed, w, stride=2, padding=3).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, w.grad, **TOL[torch.float64])


def test_reference_matrices_agree_with_scipy():
    """The matrix reference used above equals scipy.ndimage at stride 1 (two independent references)."""
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 9))
    raw = np.array([-0.5, 0.3, 1.2])
    for mode in ("zeros", "reflect", "replicate", "circular"):
        np.testing.assert_allclose(reference.envelope_strided(x, raw, 5, mode), reference.envelope(x, raw, 5, mode),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["auto", "separable", "full", "cpp", "triton"])
@pytest.mark.parametrize("channels", [1, 3])
def test_an_empty_batch_goes_forward_and_backward_through_every_op(impl, channels):
    x = torch.randn(0, channels, 9, 9, requires_grad=True)
    raw = torch.zeros(channels, requires_grad=True)
    y = functional.gaussian_envelope(x, raw, 5, stride=2, impl=impl)
    assert y.shape == (0, channels, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(raw.grad, torch.zeros(channels))
    w = torch.randn(4, channels, 3, 3, requires_grad=True)
    for need_x in (True, False):  # without the input gradient: the stem's route
        xi = torch.randn(0, channels, 9, 9, requires_grad=need_x)
        r = torch.zeros(channels, requires_grad=True)
        out = functional.envelope_conv2d(xi, r, 5, w, padding=1, impl=impl)
        assert out.shape == (0, 4, 9, 9)
        out.sum().backward()
        assert torch.equal(r.grad, torch.zeros(channels))


@pytest.mark.parametrize("channels, stride", [(3, [1, 1]), (17, [2, 2])])
def test_the_cpp_kernels_two_loops_agree(channels, stride):
    """The ring loop and the pass-per-axis loop compute one envelope and one backward, whichever the rule picks."""
    needs("cpp")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 11, 9, dtype=torch.float64, generator=gen)
    raw = torch.randn(channels, dtype=torch.float64, generator=gen)
    g, d = EF.gaussian_kernel1d(raw, 5), EF.gaussian_kernel1d_derivative(raw, 5)
    ring, axes = cpu.forward(x, g, stride, ring=True), cpu.forward(x, g, stride, ring=False)
    torch.testing.assert_close(ring, axes)
    gy = torch.randn(ring.shape, dtype=torch.float64, generator=gen)
    ring, axes = (cpu.backward(gy, x, g, d, stride, True, ring=loop) for loop in (True, False))
    for a, b in zip(ring, axes):
        torch.testing.assert_close(a, b)
