"""Every kernel in 1-D, 2-D and 3-D, with one sigma per channel or one per channel and axis.

The C++ (``"cpp"``) and Triton kernels (through Triton's interpreter on CPU tensors) against the
scipy reference of tests/reference.py: the forward by ``ndimage.correlate1d`` along each axis, the
input gradient by the transposed pass matrices, the sigma gradient by central differences of the
reference; and gradcheck / opcheck with the kernel forced.
"""

import itertools

import numpy as np
import pytest
import torch
from test_ops import needs

import reference
from envconv import functional

SHAPES = {1: (2, 3, 13), 2: (2, 3, 9, 11), 3: (2, 3, 5, 7, 6)}
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}
SIGMA_TOL = {torch.float64: dict(rtol=1e-6, atol=1e-7), torch.float32: dict(rtol=1e-4, atol=1e-4)}
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=CHANNELS_LAST[x.dim()])
    if layout == "strided":  # a view with gaps: every other channel of a wider tensor
        wide = torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


def _raw(channels, dims, sigma, dtype, gen):
    shape = {"channel": (channels,), "shared": (1,), "axis": (channels, dims), "shared-axis": (1, dims)}[sigma]
    return torch.randn(shape, dtype=dtype, generator=gen) * 0.8


def check_kernel(impl, dims, dtype, layout, stride, size, sigma, channels=3):
    needs(impl)
    gen = torch.Generator().manual_seed(0)
    shape = (SHAPES[dims][0], channels, *SHAPES[dims][2:])
    x = _layout(torch.randn(shape, dtype=dtype, generator=gen), layout).requires_grad_()
    raw = _raw(channels, dims, sigma, dtype, gen).requires_grad_()
    strides = [stride] * dims if isinstance(stride, int) else list(stride)[-dims:]
    y = functional.gaussian_envelope(x, raw, size, "zeros", strides, impl, spatial_dims=dims)
    want = reference.envelope_nd(x.detach(), raw.detach(), size, "zeros", strides)
    torch.testing.assert_close(y, torch.from_numpy(want).to(dtype), **TOL[dtype])
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=CHANNELS_LAST[x.dim()])
    gy = torch.randn(y.shape, dtype=dtype, generator=gen)
    gx, graw = torch.autograd.grad(y, (x, raw), gy)
    want_gx, want_graw = reference.envelope_nd_vjp(x.detach(), raw.detach(), size, gy, "zeros", strides)
    torch.testing.assert_close(gx, torch.from_numpy(want_gx).to(dtype), **TOL[dtype])
    torch.testing.assert_close(graw, torch.from_numpy(want_graw).to(dtype), **SIGMA_TOL[dtype])


LAYOUTS = {1: ["contiguous", "strided"], 2: ["contiguous", "channels_last", "strided"],
           3: ["contiguous", "channels_last", "strided"]}
CASES = [(dims, layout, stride, size, sigma)
         for dims in (1, 2, 3) for layout in LAYOUTS[dims]
         for stride, size, sigma in [(1, 3, "channel"), (2, 5, "axis"), ((1, 2, 3), 5, "shared-axis"),
                                     (1, 7, "shared"), (2, 3, "channel"), (1, 5, "axis")]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dims, layout, stride, size, sigma", CASES)
def test_cpu_kernel_against_scipy(dims, layout, stride, size, sigma, dtype):
    check_kernel("cpp", dims, dtype, layout, stride, size, sigma)


@pytest.mark.parametrize("channels, dims, layout", [(20, 2, "channels_last"), (20, 3, "channels_last"),
                                                    (20, 3, "contiguous"), (1, 1, "contiguous")])
def test_cpu_kernel_with_many_and_one_channel(channels, dims, layout):
    """Rows of at least 16 values take the row loops, shorter ones the element loops: both are checked."""
    for sigma, stride in (("axis", 2), ("channel", 1)):
        check_kernel("cpp", dims, torch.float64, layout, stride, 5, sigma, channels=channels)


TRITON_CASES = [(dims, layout, stride, size, sigma)
                for dims, layout, (stride, size, sigma) in itertools.product(
                    (1, 2, 3), ("contiguous", "channels_last"), [(1, 3, "channel"), (2, 5, "axis"),
                                                                 ((1, 2, 3), 3, "shared-axis")])
                if not (dims == 1 and layout == "channels_last")]


@pytest.mark.parametrize("dims, layout, stride, size, sigma", TRITON_CASES)
def test_triton_kernel_against_scipy(dims, layout, stride, size, sigma):
    check_kernel("triton", dims, torch.float64, layout, stride, size, sigma)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("sigma", ["channel", "axis"])
def test_gradcheck_and_opcheck_with_the_kernel_forced(impl, dims, sigma):
    needs(impl)
    gen = torch.Generator().manual_seed(1)
    shape = {1: (2, 2, 7), 2: (1, 2, 5, 6), 3: (1, 2, 3, 4, 5)}[dims]
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    raw = _raw(2, dims, sigma, torch.float64, gen).requires_grad_()

    def f(a, b):
        return functional.gaussian_envelope(a, b, 3, "zeros", 2, impl, spatial_dims=dims)

    assert torch.autograd.gradcheck(f, (x, raw))
    stride = [2] * dims
    torch.library.opcheck(torch.ops.envconv.envelope.default, (x.detach(), raw.detach(), 3, stride, "zeros", impl))
    grad = torch.randn(f(x, raw).shape, dtype=torch.float64, generator=gen)
    torch.library.opcheck(torch.ops.envconv.envelope_backward.default,
                          (grad, x.detach(), raw.detach(), 3, stride, "zeros", impl, True, True))


def test_cpu_kernel_sigma_gradient_per_axis_sums_to_the_shared_one():
    """Equal columns: the per-axis sigma gradient's row sums are the one-sigma-per-channel gradient."""
    needs("cpp")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 6, 7, dtype=torch.float64, generator=gen)
    raw = torch.randn(4, dtype=torch.float64, generator=gen)
    per_axis = raw[:, None].repeat(1, 3).requires_grad_()
    shared = raw.clone().requires_grad_()
    gy = torch.randn(2, 4, 3, 3, 4, dtype=torch.float64, generator=gen)
    for r in (per_axis, shared):
        (functional.gaussian_envelope(x, r, 5, "zeros", 2, "cpp", spatial_dims=3) * gy).sum().backward()
    np.testing.assert_allclose(per_axis.grad.sum(1).numpy(), shared.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dims, sigma", [(1, "axis"), (3, "channel"), (2, "axis")])
def test_triton_kernel_in_half_precision_within_a_rounding_per_pass(dtype, dims, sigma):
    """Each pass rounds its result to the dtype (its sum is float32): about one rounding per axis."""
    needs("triton")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(SHAPES[dims], generator=gen).to(dtype)
    raw = _raw(3, dims, sigma, torch.float32, gen)
    eps = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}[dtype]
    xr, rr = x.detach().requires_grad_(), raw.clone().requires_grad_()
    y = functional.gaussian_envelope(xr, rr, 5, "zeros", 2, "triton", spatial_dims=dims)
    assert y.dtype == dtype
    want = reference.envelope_nd(x.double(), raw.double(), 5, "zeros", [2] * dims)
    torch.testing.assert_close(y.double(), torch.from_numpy(want), rtol=dims * eps, atol=dims * eps * 4)
    gy = torch.randn(y.shape, generator=gen).to(dtype)
    gx, graw = torch.autograd.grad(y, (xr, rr), gy)
    want_gx, want_graw = reference.envelope_nd_vjp(x.double(), raw.double(), 5, gy.double(), "zeros", [2] * dims)
    torch.testing.assert_close(gx.double(), torch.from_numpy(want_gx), rtol=dims * eps, atol=dims * eps * 4)
    assert graw.dtype == torch.float32  # the sigma gradient keeps raw_sigma's dtype
    torch.testing.assert_close(graw.double(), torch.from_numpy(want_graw), rtol=20 * eps, atol=20 * eps)
