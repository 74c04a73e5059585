"""A size k_g per spatial axis: every kernel and op against the scipy reference, gradients, graphs, FLOPs.

The ops take ``axis_sizes`` (one size per spatial axis, ``size`` the largest); the C++ kernel
gets the taps centred in a tensor of the largest size and runs each axis with its own, the
Triton and composite passes take each axis's own kernel.
"""

import pytest
import torch
from test_kernels_nd import SIGMA_TOL, TOL, _layout, _raw
from test_ops import needs
from torch.utils.flop_counter import FlopCounterMode

import reference
from envconv import functional

SHAPES = {2: (2, 3, 9, 11), 3: (2, 3, 5, 7, 8)}
SIZES = {2: [(3, 7), (1, 5), (9, 3)], 3: [(3, 5, 7), (1, 9, 9), (5, 5, 3)]}
CASES = [(impl, dims, sizes, stride, sigma, layout)
         for impl, layouts in (("cpp", ("contiguous", "channels_last")), ("separable", ("contiguous",)),
                               ("triton", ("contiguous", "channels_last")))
         for dims in (2, 3) for sizes in SIZES[dims] for layout in layouts
         for stride, sigma in ((1, "channel"), (2, "axis"))]


def check(impl, dims, sizes, stride, sigma, layout, dtype=torch.float64, mode="zeros"):
    needs(impl, mode)
    gen = torch.Generator().manual_seed(sum(sizes))
    x = _layout(torch.randn(SHAPES[dims], dtype=dtype, generator=gen), layout).requires_grad_()
    raw = _raw(3, dims, sigma, dtype, gen).requires_grad_()
    strides = [stride] * dims
    y = functional.gaussian_envelope(x, raw, sizes, mode, strides, impl, spatial_dims=dims)
    want = reference.envelope_nd(x.detach(), raw.detach(), sizes, mode, strides)
    torch.testing.assert_close(y, torch.from_numpy(want).to(dtype), **TOL[dtype])
    gy = torch.randn(y.shape, dtype=dtype, generator=gen)
    gx, graw = torch.autograd.grad(y, (x, raw), gy)
    want_gx, want_graw = reference.envelope_nd_vjp(x.detach(), raw.detach(), sizes, gy, mode, strides)
    torch.testing.assert_close(gx, torch.from_numpy(want_gx).to(dtype), **TOL[dtype])
    torch.testing.assert_close(graw, torch.from_numpy(want_graw).to(dtype), **SIGMA_TOL[dtype])


@pytest.mark.parametrize("impl, dims, sizes, stride, sigma, layout", CASES)
def test_every_kernel_with_a_size_per_axis_against_scipy(impl, dims, sizes, stride, sigma, layout):
    check(impl, dims, sizes, stride, sigma, layout)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_composite_pads_each_axis_by_its_own_radius(mode):
    """(9, 3) on a 5 x 11 map: reflect needs r < 5 along the height - its own r = 4, not a shared one."""
    check("separable", 2, (9, 3), 1, "axis", "contiguous", mode=mode)


def test_full_variant_and_fp32_with_a_size_per_axis():
    check("full", 2, (3, 1), 1, "channel", "contiguous")
    check("full", 2, (5, 3), 2, "axis", "channels_last")
    check("cpp", 3, (3, 5, 7), 2, "axis", "channels_last", dtype=torch.float32)


def test_reflect_refuses_a_map_smaller_than_one_axis_radius():
    x = torch.randn(1, 2, 4, 20)
    functional.gaussian_envelope(x, torch.zeros(2), (7, 9), "reflect")  # r = 3 < 4 and 4 < 20
    with pytest.raises(ValueError, match=r"each spatial size > its r = \(4, 1\)"):
        functional.gaussian_envelope(x, torch.zeros(2), (9, 3), "reflect")


@pytest.mark.parametrize("impl", ["cpp", "separable", "triton"])
@pytest.mark.parametrize("dims, sizes", [(2, (3, 5)), (3, (1, 3, 5))])
@pytest.mark.parametrize("sigma", ["channel", "axis"])
def test_gradcheck_gradgradcheck_and_opcheck(impl, dims, sizes, sigma):
    needs(impl)
    gen = torch.Generator().manual_seed(2)
    shape = {2: (1, 2, 5, 6), 3: (1, 2, 3, 4, 5)}[dims]
    x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
    raw = _raw(2, dims, sigma, torch.float64, gen).requires_grad_()

    def f(a, b):
        return functional.gaussian_envelope(a, b, sizes, "zeros", 2, impl, spatial_dims=dims)

    assert torch.autograd.gradcheck(f, (x, raw))
    if impl != "triton":  # double backward runs the same composite passes whatever the kernel
        assert torch.autograd.gradgradcheck(f, (x, raw))
    stride, axis_sizes = [2] * dims, list(sizes)
    torch.library.opcheck(torch.ops.envconv.envelope.default,
                          (x.detach(), raw.detach(), max(sizes), stride, "zeros", impl, axis_sizes))
    grad = torch.randn(f(x, raw).shape, dtype=torch.float64, generator=gen)
    torch.library.opcheck(torch.ops.envconv.envelope_backward.default,
                          (grad, x.detach(), raw.detach(), max(sizes), stride, "zeros", impl, True, True, axis_sizes))


def test_envelope_conv_ops_with_a_size_per_axis_match_envelope_then_conv():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 9, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    raw = torch.randn(3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    sizes = (1, 5, 7)
    y = functional.envelope_conv(x, raw, sizes, w, padding=1, stride=2)
    smoothed = torch.from_numpy(reference.envelope_nd(x.detach(), raw.detach(), sizes))
    torch.testing.assert_close(y, torch.nn.functional.conv3d(smoothed, w.detach(), padding=1, stride=2),
                               rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda *a: functional.envelope_conv(*a[:2], sizes, a[2], padding=1, stride=2),
                                    (x, raw, w))
    x2 = torch.randn(2, 2, 6, 7, dtype=torch.float64, generator=gen)
    raw2, w2 = torch.randn(2, dtype=torch.float64, generator=gen), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    args = (x2, raw2, w2, None, 5, [1, 1], "zeros", "auto", [1, 1], [1, 1], [1, 1], 1, [5, 3])
    torch.library.opcheck(torch.ops.envconv.envelope_conv.default, args)
    # the few-channel stem backward (no input gradient) with a size per axis
    raw2.requires_grad_()
    stem = torch.autograd.grad(functional.envelope_conv2d(x2, raw2, (5, 3), w2, padding=1).square().sum(), raw2)[0]
    smoothed = lambda r: functional.gaussian_envelope(x2, r, (5, 3), impl="separable")  # noqa: E731
    plain = torch.autograd.grad(torch.nn.functional.conv2d(smoothed(raw2), w2, padding=1).square().sum(), raw2)[0]
    torch.testing.assert_close(stem, plain, rtol=1e-10, atol=1e-12)


def test_vmap_and_jvp_with_a_size_per_axis():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 2, 5, 6, dtype=torch.float64, generator=gen)
    raw = torch.randn(3, 2, 2, dtype=torch.float64, generator=gen)  # a (C, n) sigma per vmapped sample

    def f(a, b):
        return functional.gaussian_envelope(a, b, (3, 5), stride=(1, 2))

    batched = torch.func.vmap(f)(x, raw)
    torch.testing.assert_close(batched, torch.stack([f(a, b) for a, b in zip(x, raw)]))
    tangents = (torch.randn_like(x[0]), torch.randn_like(raw[0]))
    _, jvp = torch.func.jvp(f, (x[0], raw[0]), tangents)
    eps = 1e-6
    fd = (f(x[0] + eps * tangents[0], raw[0] + eps * tangents[1])
          - f(x[0] - eps * tangents[0], raw[0] - eps * tangents[1])) / (2 * eps)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-8)


def test_the_kernels_check_axis_sizes_as_the_fake_kernel_does():
    x, raw = torch.randn(2, 3, 6, 8), torch.zeros(3)
    with pytest.raises(RuntimeError, match="axis_sizes must be 2 odd positive ints .* largest is size=5"):
        torch.ops.envconv.envelope(x, raw, 5, [1, 1], "zeros", "auto", [3, 7])


def test_flop_formulas_count_each_axis_with_its_own_size():
    x = torch.randn(2, 3, 6, 8, 10)
    sizes = (1, 3, 5)
    with FlopCounterMode(display=False) as counter:
        functional.gaussian_envelope(x, torch.zeros(3), sizes, stride=(1, 2, 2), spatial_dims=3)
    # width pass (5 taps) on every input row at 5 strided columns, height pass (3 taps) at 4 of 8 rows,
    # the depth pass (1 tap, computed) at all 6 slices: 2 FLOPs per multiply-add
    n, c = 2, 3
    want = 2 * (5 * n * c * 6 * 8 * 5 + 3 * n * c * 6 * 4 * 5 + 1 * n * c * 6 * 4 * 5)
    assert counter.get_total_flops() == want
    # the per-axis count with equal sizes is the one-size count
    with FlopCounterMode(display=False) as same:
        functional.gaussian_envelope(x, torch.zeros(3), (5, 5, 5), spatial_dims=3)
    assert same.get_total_flops() == 2 * 5 * n * c * (6 * 8 * 10) * 3
