"""``envconv::envelope_conv``: the envelope and a 1-D, 2-D or 3-D convolution in one op.

Checked against scipy's envelope (tests/reference.py) followed by ``torch.nn.functional.conv{n}d``,
gradients against finite differences (including the few-channel stem backward, which takes the
sigma gradient from weight gradients instead of the convolution's input gradient), opcheck, and
per-sample gradients under vmap against a loop.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from op_cases import SIGMA_TOL, TOL, assert_per_sample_gradients_equal_a_loop, in_layout, needs
from torch.utils._python_dispatch import TorchDispatchMode

import reference
from envconv import DisentangledConv1d, DisentangledConv2d, DisentangledConv3d, functional

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SHAPES = {1: (2, 3, 17), 2: (2, 3, 9, 10), 3: (2, 3, 4, 7, 6)}


def _case(dims, sigma, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPES[dims][0], channels, *SHAPES[dims][2:], dtype=torch.float64, generator=gen)
    raw = {"channel": torch.randn(channels, dtype=torch.float64, generator=gen),
           "shared": torch.randn(1, dtype=torch.float64, generator=gen),
           "axis": torch.randn(channels, dims, dtype=torch.float64, generator=gen)}[sigma] * 0.7
    weight = torch.randn(4, channels, *([3] * dims), dtype=torch.float64, generator=gen)
    bias = torch.randn(4, dtype=torch.float64, generator=gen)
    return x, raw, weight, bias


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("sigma", ["channel", "shared", "axis"])
@pytest.mark.parametrize("env_stride, stride", [(1, 1), (1, 2), (2, 1)])
def test_forward_equals_the_scipy_envelope_then_the_conv(dims, sigma, env_stride, stride):
    x, raw, weight, bias = _case(dims, sigma)
    y = functional.envelope_conv(x, raw, 5, weight, bias, env_stride=env_stride, stride=stride, padding=1)
    smoothed = torch.from_numpy(reference.envelope(x, raw, 5, "zeros", [env_stride] * dims))
    np.testing.assert_allclose(y.numpy(), CONV[dims](smoothed, weight, bias, stride, 1).numpy(), rtol=1e-12,
                               atol=1e-12)


class ConvBackwardMasks(TorchDispatchMode):
    """Records the output mask of every ``aten.convolution_backward`` call."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.masks.append(list(args[-1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("sigma", ["channel", "shared", "axis"])
def test_stem_backward_equals_finite_differences_without_the_input_gradient(dims, sigma):
    x, raw, weight, bias = _case(dims, sigma)
    raw, weight, bias = (t.requires_grad_() for t in (raw, weight, bias))

    def f(r, w, b):
        return torch.ops.envconv.envelope_conv(x, r, w, b, 5, [1] * dims, "zeros", "auto", [2] * dims, [1] * dims,
                                               [1] * dims, 1)

    assert torch.autograd.gradcheck(f, (raw, weight, bias))
    with ConvBackwardMasks() as seen:
        f(raw, weight, bias).sum().backward()
    assert seen.masks and not any(mask[0] for mask in seen.masks)  # no convolution input gradient


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("sigma", ["channel", "axis"])
def test_backward_through_the_input_and_second_order(dims, sigma):
    x, raw, weight, bias = _case(dims, sigma, channels=5)  # more channels than a stem: the general backward
    args = [t.requires_grad_() for t in (x, raw, weight, bias)]

    def f(a, r, w, b):
        return functional.envelope_conv(a, r, 3, w, b, stride=2, padding=1)

    assert torch.autograd.gradcheck(f, args, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_opcheck(dims):
    x, raw, weight, bias = _case(dims, "axis")
    ones = [1] * dims
    for args in ((x, raw, weight, bias, 5, ones, "zeros", "auto", [2] * dims, ones, ones, 1),
                 (x, raw[:, 0], weight, None, 3, [2] * dims, "reflect", "auto", ones, ones, ones, 1)):
        torch.library.opcheck(torch.ops.envconv.envelope_conv.default, args)


def test_vmap_per_sample_gradients_equal_a_loop():
    x, raw, weight, _ = _case(3, "axis")

    def loss(r, xi):
        return functional.envelope_conv(xi, r, 3, weight, padding=1).square().sum()

    assert_per_sample_gradients_equal_a_loop(loss, raw, x)


@pytest.mark.parametrize("layer, shape, kwargs", [
    (DisentangledConv3d, (2, 3, 4, 9, 10), dict(kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))),
    (DisentangledConv1d, (2, 6, 40), dict(kernel_size=5, stride=2, padding=2)),
    (DisentangledConv1d, (2, 6, 40), dict(kernel_size=1, stride=2)),
    (DisentangledConv3d, (2, 3, 4, 9, 10), dict(kernel_size=3, padding="same")),
])
def test_layers_run_the_op_or_two_ops_with_the_same_result(layer, shape, kwargs):
    torch.manual_seed(0)
    conv = layer(shape[1], 4, sigma_per_axis=True, sigma_init=0.4, **kwargs).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *conv.parameters()])
    conv.recompute_envelope = False
    y_apart = conv(x)
    grads_apart = torch.autograd.grad(y_apart.square().sum(), [x, *conv.parameters()])
    torch.testing.assert_close(y, y_apart, rtol=1e-12, atol=1e-12)
    for g, h in zip(grads, grads_apart):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-10)
    unbatched = conv(x[0])  # without N: the same as the first sample
    torch.testing.assert_close(unbatched, y_apart[0], rtol=1e-12, atol=1e-12)


def test_wrong_weight_is_named():
    with pytest.raises(ValueError, match="weight must be a .* tensor with 1-3 spatial dims"):
        functional.envelope_conv(torch.randn(1, 3, 8), torch.zeros(3), 3, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\(N, C, L\)"):
        functional.envelope_conv(torch.randn(1, 3, 8, 8), torch.zeros(3), 3, torch.randn(4, 3, 3))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels", [3, 8])  # 3: the stem's forward-conv backward
def test_opcheck_2d_in_both_layouts_and_dtypes(layout, channels):
    for dtype, env_stride in itertools.product((torch.float32, torch.float64), ([1, 1], [2, 2])):
        x, raw, weight, bias = (t.to(dtype) for t in _case(2, "channel", channels))
        x = in_layout(x, layout)
        args = (x, raw, weight, bias, 5, env_stride, "zeros", "auto", [2, 1], [1, 1], [1, 1], 1)
        torch.library.opcheck(torch.ops.envconv.envelope_conv.default,
                              tuple(t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in args))


@pytest.mark.parametrize("sigma", ["channel", "axis"])
def test_gradients_equal_the_reference_in_every_route(sigma):
    """With and without the input gradient (the stem route takes sigma's gradient from the weight's), few and
    many channels: the input, sigma and weight gradients against the reference envelope then a plain conv."""
    for channels, need_x in ((3, False), (3, True), (9, True), (9, False)):
        x, raw, weight, _ = _case(2, sigma, channels)
        x, raw, weight = x.requires_grad_(need_x), raw.requires_grad_(), weight.requires_grad_()
        y = functional.envelope_conv2d(x, raw, 5, weight, stride=2, padding=1)
        gy = torch.randn_like(y)
        got = list(torch.autograd.grad(y, [t for t in (x, raw, weight) if t.requires_grad], gy))
        smoothed = torch.from_numpy(reference.envelope(x.detach(), raw.detach(), 5)).requires_grad_()
        w_ref = weight.detach().clone().requires_grad_()
        want_y = F.conv2d(smoothed, w_ref, stride=2, padding=1)
        torch.testing.assert_close(y, want_y, **TOL[torch.float64])
        g_smoothed, want_gw = torch.autograd.grad(want_y, (smoothed, w_ref), gy)  # the conv's own gradients
        want_gx, want_graw = reference.envelope_vjp(x.detach(), raw.detach(), 5, g_smoothed)
        if need_x:
            torch.testing.assert_close(got.pop(0), torch.from_numpy(want_gx), **TOL[torch.float64])
        torch.testing.assert_close(got[0], torch.from_numpy(want_graw), **SIGMA_TOL[torch.float64])
        torch.testing.assert_close(got[1], want_gw, **TOL[torch.float64])


def test_a_size_per_axis_equals_the_envelope_then_the_conv():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 9, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    raw = torch.randn(3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    sizes = (1, 5, 7)
    y = functional.envelope_conv(x, raw, sizes, w, padding=1, stride=2)
    smoothed = torch.from_numpy(reference.envelope(x.detach(), raw.detach(), sizes))
    torch.testing.assert_close(y, F.conv3d(smoothed, w.detach(), padding=1, stride=2), rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda *a: functional.envelope_conv(*a[:2], sizes, a[2], padding=1, stride=2),
                                    (x, raw, w))
    x2 = torch.randn(2, 2, 6, 7, dtype=torch.float64, generator=gen)
    raw2, w2 = torch.randn(2, dtype=torch.float64, generator=gen), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    args = (x2, raw2, w2, None, 5, [1, 1], "zeros", "auto", [1, 1], [1, 1], [1, 1], 1, [5, 3])
    torch.library.opcheck(torch.ops.envconv.envelope_conv.default, args)
    # the few-channel stem backward (no input gradient) with a size per axis
    raw2.requires_grad_()
    stem = torch.autograd.grad(functional.envelope_conv2d(x2, raw2, (5, 3), w2, padding=1).square().sum(), raw2)[0]
    smoothed = functional.gaussian_envelope(x2, raw2, (5, 3), impl="separable")
    plain = torch.autograd.grad(F.conv2d(smoothed, w2, padding=1).square().sum(), raw2)[0]
    torch.testing.assert_close(stem, plain, rtol=1e-10, atol=1e-12)


def test_a_frozen_sigma_stem_with_the_cpp_kernel_trains_its_weight():
    needs("cpp")
    torch.manual_seed(0)
    conv = DisentangledConv2d(3, 8, 7, stride=2, padding=3, bias=False).double()
    conv.envelope.raw_sigma.requires_grad_(False)
    conv.envelope.impl = "cpp"
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    conv(x).square().sum().backward()
    smoothed = torch.from_numpy(reference.envelope(x, conv.envelope.raw_sigma, 9))
    w = conv.weight.detach().clone().requires_grad_()
    F.conv2d(smoothed, w, stride=2, padding=3).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, w.grad, **TOL[torch.float64])
