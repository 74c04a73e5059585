"""The envelope in 1-D and 3-D (inputs (N, C, L) and (N, C, D, H, W)): the same ops, the composite kernels.

Every case is checked against an independent reference, scipy's ``ndimage.correlate1d`` along each
spatial axis (the 1-D kernel of eq. (9) from tests/reference.py), and the gradients against finite
differences.
"""

import numpy as np
import pytest
import torch
from scipy import ndimage

import reference
from envconv import GaussianEnvelope, functional
from envconv.ops.flop_formulas import envelope_flops

SCIPY_MODES = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest", "circular": "wrap"}
SHAPES = {1: (2, 3, 11), 3: (2, 3, 5, 6, 7)}


def _reference(x, raw, size, mode, stride):
    """The separable envelope by scipy: the kernel along every spatial axis, then every stride-th sample."""
    x = np.asarray(x, dtype=np.float64)
    k = reference.kernel1d(np.asarray(raw, dtype=np.float64), size)
    k = np.repeat(k, x.shape[1], axis=0) if k.shape[0] == 1 else k
    out = x.copy()
    for c in range(x.shape[1]):
        for axis in range(1, x.ndim - 1):  # axes of out[:, c]: 0 is the batch
            out[:, c] = ndimage.correlate1d(out[:, c], k[c], axis=axis, mode=SCIPY_MODES[mode], cval=0.0)
    return out[(..., *(slice(None, None, s) for s in stride))]


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("mode", list(SCIPY_MODES))
@pytest.mark.parametrize("size, stride, shared", [(1, 1, False), (3, 1, False), (5, 2, False), (9, 1, True),
                                                  (5, (1, 2, 3), False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_equals_scipy(dims, mode, size, stride, shared, dtype):
    if isinstance(stride, tuple):
        stride = stride[:dims] if dims == 3 else stride[1:2]
    strides = [stride] * dims if isinstance(stride, int) else list(stride)
    shape = SHAPES[dims]
    if mode == "reflect" and size // 2 >= min(shape[2:]):
        pytest.skip("reflect padding needs r < the map size")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    raw = torch.tensor([0.4] if shared else [-1.0, 0.2, 1.5], dtype=dtype)
    y = functional.gaussian_envelope(x, raw, size, mode, stride, spatial_dims=dims)
    want = _reference(x, raw, size, mode, strides)
    assert y.shape == want.shape and y.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    np.testing.assert_allclose(y.numpy(), want, rtol=tol, atol=tol)
    # unbatched input: the same, without N
    np.testing.assert_allclose(functional.gaussian_envelope(x[0], raw, size, mode, stride, spatial_dims=dims).numpy(),
                               want[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("mode, stride", [("zeros", 1), ("reflect", 2), ("circular", 1), ("replicate", 2)])
def test_gradients_and_second_order_against_finite_differences(dims, mode, stride):
    shape = {1: (2, 2, 7), 3: (1, 2, 3, 4, 5)}[dims]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    raw = torch.tensor([-0.3, 0.8], dtype=torch.float64, requires_grad=True)

    def f(a, b):
        return functional.gaussian_envelope(a, b, 5 if dims == 1 else 3, mode, stride, spatial_dims=dims)

    assert torch.autograd.gradcheck(f, (x, raw), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (x, raw), check_fwd_over_rev=True)


@pytest.mark.parametrize("dims", [1, 3])
def test_opcheck(dims):
    x = torch.randn(SHAPES[dims])
    for stride in ([1] * dims, [2] * dims):
        torch.library.opcheck(torch.ops.envconv.envelope.default, (x, torch.randn(3), 5, stride, "zeros", "auto"))
        grad = torch.randn(x.shape[:2] + tuple((n - 1) // s + 1 for n, s in zip(x.shape[2:], stride)))
        torch.library.opcheck(torch.ops.envconv.envelope_backward.default,
                              (grad, x, torch.randn(3), 5, stride, "reflect", "auto", True, True))


def test_the_full_kernel_for_2d_maps_refuses_other_dims_by_name():
    with pytest.raises(ValueError, match="impl='full' .* is for 2-D maps, got 1 spatial dims"):
        functional.gaussian_envelope(torch.randn(1, 2, 9), torch.zeros(2), 5, impl="full", spatial_dims=1)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
def test_kernels_refuse_padding_they_lack_by_name(impl):
    with pytest.raises(ValueError, match="pads? with zeros, got padding_mode='reflect'"):
        functional.gaussian_envelope(torch.randn(1, 2, 4, 5, 9), torch.zeros(2, 3), 5, "reflect", impl=impl,
                                     spatial_dims=3)


def test_wrong_shapes_and_strides_are_named():
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\) or \(C, D, H, W\), got 3 dims"):
        functional.gaussian_envelope(torch.randn(2, 3, 8), torch.zeros(3), 5, spatial_dims=3)
    with pytest.raises(ValueError, match="stride must be a positive int or 3 of them"):
        functional.gaussian_envelope(torch.randn(1, 3, 4, 4, 4), torch.zeros(3), 5, stride=(2, 2), spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
        GaussianEnvelope(3, spatial_dims=4)


def test_module_layout_record_and_flops():
    env = GaussianEnvelope(4, size=5, init=0.3, spatial_dims=3)
    x = torch.randn(2, 4, 6, 7, 8).contiguous(memory_format=torch.channels_last_3d)
    y = env(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)  # the layout is kept, as in 2-D
    np.testing.assert_allclose(y.detach().numpy(), _reference(x, env.raw_sigma.detach(), 5, "zeros", [1, 1, 1]),
                               rtol=2e-6, atol=2e-6)
    assert env.get_extra_state().tolist() == [1, 5, 1, 0, 4, 3]
    with pytest.raises(RuntimeError, match="the weights are of a 2-D envelope, this one is 3-D"):
        env.load_state_dict(GaussianEnvelope(4, size=5).state_dict())
    assert "spatial_dims=3" in repr(env)
    # FLOPs: one pass per axis, last axis first, each k multiply-adds per output (2 FLOPs each)
    n, c, d, h, w = 2, 4, 6, 7, 8
    passes = n * c * d * h * 4 + n * c * d * 4 * 4 + n * c * 3 * 4 * 4  # stride 2: 8 -> 4, 7 -> 4, 6 -> 3
    assert envelope_flops((n, c, d, h, w), 5, [2, 2, 2]) == 2 * 5 * passes


def test_vmap_per_sample_gradients_in_1d_equal_a_loop():
    raw = torch.tensor([0.1, -0.4, 0.9], dtype=torch.float64)
    x = torch.randn(4, 3, 10, dtype=torch.float64)

    def loss(r, xi):
        return functional.gaussian_envelope(xi[None], r, 5, "reflect", 2, spatial_dims=1).square().sum()

    assert_per_sample_gradients_equal_a_loop(loss, raw, x)


def assert_per_sample_gradients_equal_a_loop(loss, raw, x):
    """``vmap(grad(loss))`` over the samples of ``x`` equals ordinary backward passes, one sample at a time."""
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(raw, x)
    loop = []
    for xi in x:
        r = raw.clone().requires_grad_()
        loop.append(torch.autograd.grad(loss(r, xi), r)[0])
    torch.testing.assert_close(per_sample, torch.stack(loop), rtol=1e-12, atol=1e-12)


def test_automatic_shrinking_counts_the_mass_in_every_dimension():
    from envconv import shrink
    from envconv.kernels import gaussian_kernel1d

    raw = 0.0  # sigma 0.83: 5 central taps of 9 hold m = 0.99853 of the 1-D kernel
    m = float(gaussian_kernel1d(torch.tensor([raw], dtype=torch.float64), 9)[0, 2:7].sum())
    sizes = {}
    for dims in (1, 2, 3):
        env = GaussianEnvelope(1, 9, init=raw, spatial_dims=dims)
        sizes[dims] = shrink(env, "auto", eps=1 - m ** 2 + 1e-9).size  # the 2-D mass of 5 taps, just
    assert sizes == {1: 5, 2: 5, 3: 7}  # 1-D keeps m > m^2 with 5; 3-D needs m^3 >= m^2: more taps
