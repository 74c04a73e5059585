"""Every kernel of the envelope op against the scipy reference: one grid, the forward and both gradients.

The grid runs each implementation (``impl``: the composite ``"separable"`` and, for 2-D maps,
``"full"``; the C++ ``"cpp"``; the Triton kernels through Triton's interpreter on CPU tensors;
``"auto"``) over 1-D, 2-D and 3-D maps in every layout, with each form of raw_sigma (one per
channel, one shared, one per channel and axis, one per axis shared), one size or a size per
axis, every stride form and every padding mode the kernel has. The references
(tests/reference.py, no envconv code): the forward by ``scipy.ndimage.correlate1d`` along each
axis, the input gradient by the transposed pass matrices, the sigma gradient by central
differences of the forward. ``test_properties.py`` draws random configurations beyond the grid.
"""

import numpy as np
import pytest
import torch
from op_cases import CHANNELS_LAST, TOL, assert_envelope_matches_reference, in_layout, needs, raw_sigma

import reference
from envconv import functional
from envconv import kernels as EF
from envconv.ops import cpu

SHAPES = {1: (2, 13), 2: (2, 9, 11), 3: (2, 5, 7, 6)}  # (N, *spatial); the channels come with the case
MIXED = (1, 2, 3)  # a stride per axis: its last ``dims`` entries
AXIS_SIZES = {1: [(5,), (3,)], 2: [(9, 3), (3, 7)], 3: [(1, 9, 3), (5, 3, 7)]}
# (stride, size, sigma, padding mode): together every value of each; "axes0"/"axes1" are AXIS_SIZES
ROWS = [(1, 1, "channel", "zeros"), (1, 3, "channel", "reflect"), (2, 5, "axis", "replicate"),
        ("mixed", 5, "shared-axis", "circular"), (1, 9, "shared", "zeros"), (2, 3, "channel", "circular"),
        ("mixed", 7, "shared", "replicate"), (1, "axes0", "axis", "reflect"), (2, "axes1", "channel", "zeros"),
        ("mixed", 3, "channel", "zeros")]
LAYOUTS = {1: ("contiguous", "strided"), 2: ("contiguous", "channels_last", "strided"),
           3: ("contiguous", "channels_last", "strided")}


def _grid(impl):
    dims_of = {"full": (2,)}.get(impl, (1, 2, 3))
    kernel = impl in ("cpp", "triton")  # they pad with zeros only: the rows' modes become zeros
    rows = list(dict.fromkeys((s, k, sig, "zeros" if kernel else m) for s, k, sig, m in ROWS))
    # Triton's interpreter is slow: its kernels run the two dense layouts only
    layouts = {d: [lay for lay in LAYOUTS[d] if impl != "triton" or lay != "strided"] for d in dims_of}
    return [(impl, dims, layout, *row) for dims in dims_of for layout in layouts[dims] for row in rows]


def _resolve(dims, stride, size):
    strides = [stride] * dims if isinstance(stride, int) else list(MIXED[-dims:])
    sizes = AXIS_SIZES[dims][int(size[-1])] if isinstance(size, str) else size
    return strides, sizes


def check(impl, dims, layout, stride, size, sigma, mode, dtype, channels=3):
    needs(impl, mode)
    strides, size = _resolve(dims, stride, size)
    gen = torch.Generator().manual_seed(dims * 100 + channels)
    n, *spatial = SHAPES[dims]
    x = in_layout(torch.randn(n, channels, *spatial, dtype=dtype, generator=gen), layout).requires_grad_()
    raw = raw_sigma(channels, dims, sigma, dtype, gen).requires_grad_()
    y = assert_envelope_matches_reference(x, raw, size, mode, strides, impl, gen)
    layout_of_y = CHANNELS_LAST[x.dim()] if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=layout_of_y)
    if impl == "auto":  # an unbatched input: the same without N
        one = functional.gaussian_envelope(x[0].detach(), raw.detach(), size, mode, strides, spatial_dims=dims)
        torch.testing.assert_close(one, y[0].detach(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("impl, dims, layout, stride, size, sigma, mode",
                         _grid("separable") + _grid("full") + _grid("auto"))
def test_composite_kernels(impl, dims, layout, stride, size, sigma, mode, dtype):
    check(impl, dims, layout, stride, size, sigma, mode, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("impl, dims, layout, stride, size, sigma, mode", _grid("cpp"))
def test_cpp_kernel(impl, dims, layout, stride, size, sigma, mode, dtype):
    # 3 channels: the pass-per-axis loop; 17: on 2-D maps with a sigma per channel, the ring loop
    for channels in (3, 17):
        check(impl, dims, layout, stride, size, sigma, mode, dtype, channels)


@pytest.mark.parametrize("impl, dims, layout, stride, size, sigma, mode", _grid("triton"))
def test_triton_kernels(impl, dims, layout, stride, size, sigma, mode):
    check(impl, dims, layout, stride, size, sigma, mode, torch.float64)
    if stride == "mixed":
        check(impl, dims, layout, stride, size, sigma, mode, torch.float32)


@pytest.mark.parametrize("impl", ["cpp", "separable"])
@pytest.mark.parametrize("dims", [1, 2])
def test_a_single_channel(impl, dims):
    check(impl, dims, "contiguous", 2, 5, "channel", "zeros", torch.float64, channels=1)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", list(reference.SCIPY_MODES))
def test_the_two_references_agree(dims, mode):
    """scipy's correlate1d and the pass matrices the gradients use compute one envelope (two independent routes)."""
    gen = np.random.default_rng(dims)
    x = gen.normal(size=(2, 3, *SHAPES[dims][1:]))
    for raw, size, stride in ((np.array([-0.5, 0.3, 1.2]), 5, MIXED[-dims:]),
                              (gen.normal(size=(1, dims)), AXIS_SIZES[dims][0], [1] * dims)):
        np.testing.assert_allclose(reference.envelope_by_matrices(x, raw, size, mode, stride),
                                   reference.envelope(x, raw, size, mode, stride), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["auto", "cpp"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_equal_columns_are_the_one_sigma_envelope_and_the_gradient_splits_by_axis(impl, dims):
    needs(impl)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, *SHAPES[dims][1:], dtype=torch.float64, generator=gen)
    one = torch.randn(4, dtype=torch.float64, generator=gen).requires_grad_()
    per_axis = one.detach()[:, None].repeat(1, dims).requires_grad_()
    y_one, y_axes = (functional.gaussian_envelope(x, r, 5, "zeros", 2, impl, spatial_dims=dims)
                     for r in (one, per_axis))
    torch.testing.assert_close(y_axes, y_one, rtol=1e-13, atol=1e-13)
    gy = torch.randn(y_one.shape, dtype=torch.float64, generator=gen)
    (y_one * gy).sum().backward()
    (y_axes * gy).sum().backward()
    torch.testing.assert_close(per_axis.grad.sum(1), one.grad, rtol=1e-12, atol=1e-12)


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dims, sigma, layout", [(1, "axis", "contiguous"), (2, "channel", "channels_last"),
                                                 (2, "axis", "contiguous"), (3, "channel", "channels_last")])
def test_triton_kernels_in_half_precision_within_a_rounding_per_pass(dtype, dims, sigma, layout):
    """Each pass sums in float32 and rounds its result to the dtype: about one rounding per axis."""
    needs("triton")
    gen = torch.Generator().manual_seed(4)
    x = in_layout(torch.randn(2, 3, *SHAPES[dims][1:], generator=gen), layout).to(dtype)
    raw = raw_sigma(3, dims, sigma, torch.float32, gen)
    eps = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}[dtype]
    xr, rr = x.detach().requires_grad_(), raw.clone().requires_grad_()
    y = functional.gaussian_envelope(xr, rr, 5, "zeros", 2, "triton", spatial_dims=dims)
    assert y.dtype == dtype
    want = reference.envelope(x.double(), raw.double(), 5, "zeros", [2] * dims)
    torch.testing.assert_close(y.double(), torch.from_numpy(want), rtol=dims * eps, atol=dims * eps * 4)
    gy = torch.randn(y.shape, generator=gen).to(dtype)
    gx, graw = torch.autograd.grad(y, (xr, rr), gy)
    want_gx, want_graw = reference.envelope_vjp(x.double(), raw.double(), 5, gy.double(), "zeros", [2] * dims)
    torch.testing.assert_close(gx.double(), torch.from_numpy(want_gx), rtol=dims * eps, atol=dims * eps * 4)
    assert graw.dtype == torch.float32  # the sigma gradient keeps raw_sigma's dtype
    torch.testing.assert_close(graw.double(), torch.from_numpy(want_graw), rtol=20 * eps, atol=20 * eps)
