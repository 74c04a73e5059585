"""A sigma per channel and spatial axis (``raw_sigma`` of shape (C, n) or (1, n)) in the envelope ops.

The forward is checked against scipy (tests/reference.py ``envelope_nd``: each axis's own kernel
of eq. (9) by ``ndimage.correlate1d``), the gradients against finite differences, and the
per-axis sigma gradient against the isotropic one it must sum to when the columns are equal.
"""

import numpy as np
import pytest
import torch
from test_nd import assert_per_sample_gradients_equal_a_loop

import reference
from envconv import functional

SHAPES = {1: (2, 3, 11), 2: (2, 3, 7, 9), 3: (2, 3, 5, 6, 7)}
RAW = {1: [[-1.0], [0.2], [1.5]], 2: [[-1.0, 0.7], [0.2, -0.5], [1.5, 0.0]],
       3: [[-1.0, 0.7, 0.3], [0.2, -0.5, 1.1], [1.5, 0.0, -2.0]]}


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", list(reference.SCIPY_MODES))
@pytest.mark.parametrize("size, stride, shared", [(3, 1, False), (5, 2, False), (5, 1, True), (3, (1, 2, 3), False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_equals_scipy_with_each_axis_own_sigma(dims, mode, size, stride, shared, dtype):
    strides = [stride] * dims if isinstance(stride, int) else list(stride)[-dims:]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPES[dims], generator=gen, dtype=dtype)
    raw = torch.tensor(RAW[dims], dtype=dtype)[:1] if shared else torch.tensor(RAW[dims], dtype=dtype)
    if shared:
        raw = raw + 0.25  # a shared row of its own
    y = functional.gaussian_envelope(x, raw, size, mode, strides, spatial_dims=dims)
    want = reference.envelope_nd(x, raw, size, mode, strides)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert y.shape == want.shape and y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", ["separable", "full", "auto"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_2d_implementations_and_layouts(impl, layout):
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64).contiguous(memory_format=layout)
    raw = torch.tensor(RAW[2], dtype=torch.float64)
    for size in (3, 7):
        y = functional.gaussian_envelope(x, raw, size, impl=impl)
        assert y.is_contiguous(memory_format=layout)
        np.testing.assert_allclose(y.numpy(), reference.envelope_nd(x, raw, size), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode, stride, shared", [("zeros", 1, False), ("reflect", 2, False), ("circular", 1, True)])
def test_gradients_and_second_order_against_finite_differences(dims, mode, stride, shared):
    shape = {1: (2, 2, 7), 2: (1, 2, 5, 6), 3: (1, 2, 3, 4, 5)}[dims]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    raw = torch.tensor(RAW[dims][1:], dtype=torch.float64)
    raw = (raw[:1] if shared else raw).clone().requires_grad_()

    def f(a, b):
        return functional.gaussian_envelope(a, b, 3, mode, stride, spatial_dims=dims)

    assert torch.autograd.gradcheck(f, (x, raw), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (x, raw), check_fwd_over_rev=True)


def test_sigma_gradient_by_hand_in_2d():
    """d/d raw_h of <G, env(X)> is <G, (g'_h x g_w) * X>: the derivative kernel along the height only."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 6, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(1, 2, 6, 7, generator=gen, dtype=torch.float64)
    raw = torch.tensor([[0.3, -0.4], [1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    (functional.gaussian_envelope(x, raw, 5) * g).sum().backward()
    eps = 1e-6
    want = np.zeros((2, 2))
    for c in range(2):
        for a in range(2):
            up, down = raw.detach().numpy().copy(), raw.detach().numpy().copy()
            up[c, a] += eps
            down[c, a] -= eps
            diff = reference.envelope_nd(x, up, 5) - reference.envelope_nd(x, down, 5)
            want[c, a] = float((diff * g.numpy()).sum()) / (2 * eps)
    np.testing.assert_allclose(raw.grad.numpy(), want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_equal_columns_are_the_isotropic_envelope_and_its_gradient_splits_by_axis(dims):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPES[dims], generator=gen, dtype=torch.float64)
    g = torch.randn(SHAPES[dims], generator=gen, dtype=torch.float64)
    iso = torch.tensor([0.3, -0.6, 1.2], dtype=torch.float64, requires_grad=True)
    per_axis = iso.detach()[:, None].repeat(1, dims).requires_grad_()
    y_iso = functional.gaussian_envelope(x, iso, 5, spatial_dims=dims)
    y_axes = functional.gaussian_envelope(x, per_axis, 5, spatial_dims=dims)
    torch.testing.assert_close(y_axes, y_iso, rtol=1e-13, atol=1e-13)
    (y_iso * g).sum().backward()
    (y_axes * g).sum().backward()
    torch.testing.assert_close(per_axis.grad.sum(1), iso.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_opcheck(dims):
    x = torch.randn(SHAPES[dims])
    raw = torch.randn(3, dims)
    for stride in ([1] * dims, [2] * dims):
        torch.library.opcheck(torch.ops.envconv.envelope.default, (x, raw, 5, stride, "zeros", "auto"))
        grad = torch.randn(x.shape[:2] + tuple((n - 1) // s + 1 for n, s in zip(x.shape[2:], stride)))
        torch.library.opcheck(torch.ops.envconv.envelope_backward.default,
                              (grad, x, raw, 5, stride, "reflect", "auto", True, True))
        torch.library.opcheck(torch.ops.envconv.envelope_backward.default,
                              (grad, x, raw[:1], 3, stride, "zeros", "auto", False, True))


def test_vmap_per_sample_gradients_equal_a_loop():
    raw = torch.tensor(RAW[3], dtype=torch.float64)[:, :3]
    x = torch.randn(3, 3, 4, 5, 6, dtype=torch.float64)

    def loss(r, xi):
        return functional.gaussian_envelope(xi[None], r, 3, "zeros", 2, spatial_dims=3).square().sum()

    assert_per_sample_gradients_equal_a_loop(loss, raw, x)
    # a sigma per sample (vmapped raw_sigma), shared by the channels
    raws = torch.randn(3, 1, 3, dtype=torch.float64)
    per_raw = torch.func.vmap(torch.func.grad(loss), in_dims=(0, 0))(raws, x)
    for i in range(3):
        r = raws[i].clone().requires_grad_()
        torch.testing.assert_close(per_raw[i], torch.autograd.grad(loss(r, x[i]), r)[0], rtol=1e-12, atol=1e-12)


def test_envelope_conv2d_op_with_a_sigma_per_axis():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    raw = torch.tensor(RAW[2], dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)

    def fused(a, b, c):
        return functional.envelope_conv2d(a, b, 5, c, padding=1, stride=2)

    def plain(a, b, c):
        return torch.nn.functional.conv2d(functional.gaussian_envelope(a, b, 5), c, padding=1, stride=2)

    torch.testing.assert_close(fused(x, raw, w), plain(x, raw, w), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(fused, (x, raw, w))
    # a stem (3 channels, no input gradient) takes the same route with a sigma per axis
    x0 = x.detach()
    g1 = torch.autograd.grad(fused(x0, raw, w).square().sum(), raw)[0]
    g2 = torch.autograd.grad(plain(x0, raw, w).square().sum(), raw)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_wrong_per_axis_shapes_are_named():
    with pytest.raises(ValueError, match=r"per-axis raw_sigma must have shape \(3, 2\) or \(1, 2\)"):
        functional.gaussian_envelope(torch.randn(1, 3, 8, 8), torch.zeros(3, 3), 5)
    with pytest.raises(ValueError, match=r"per-axis raw_sigma must have shape \(3, 3\) or \(1, 3\)"):
        functional.gaussian_envelope(torch.randn(1, 3, 4, 8, 8), torch.zeros(2, 3), 5, spatial_dims=3)


@pytest.mark.parametrize("raw_shape", [(3, 3), (1, 3), (3,)])
def test_the_aten_only_form_for_exporters_equals_the_op(raw_shape):
    from envconv.ops.export import envelope_decomposed

    x = torch.randn(2, 3, 7, 8, 9, dtype=torch.float64)
    raw = torch.randn(raw_shape, dtype=torch.float64)
    for mode, stride in (("reflect", [1, 2, 1]), ("zeros", [2, 1, 3])):
        want = torch.ops.envconv.envelope(x, raw, 5, stride, mode, "auto")
        torch.testing.assert_close(envelope_decomposed(x, raw, 5, stride, mode), want, rtol=1e-13, atol=1e-13)
