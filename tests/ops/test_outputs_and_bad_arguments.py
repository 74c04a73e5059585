"""What every op returns and refuses: outputs that own their memory, empty batches, bad arguments by name.

An op's output that is a view of a kernel's intermediate makes autograd refuse the most common
pattern in CNNs, ``Conv -> ReLU(inplace=True)``; a backward that trusts its upstream gradient's
shape reads past a buffer. Both are checked for every op, dimensionality and implementation, and
every argument an op refuses is refused with a message that names it.
"""

import pytest
import torch
import torch.nn.functional as F
from op_cases import needs

import envconv
from envconv import functional as Fn
from envconv.ops import cpu
from envconv.ops.export import envelope_decomposed

DIMS = [1, 2, 3]
CPU_IMPLS = ["auto", "separable"] + (["cpp"] if cpu.available() else [])


def _x(dims, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, *[9] * dims, generator=gen, dtype=torch.float64)


def _conv(dims):
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]


@pytest.mark.parametrize("grad_on", [True, False])
@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dims", DIMS)
def test_an_in_place_relu_after_every_op_gives_the_reference_values_and_gradients(dims, impl, grad_on):
    x = _x(dims).requires_grad_(grad_on)
    raw = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=grad_on)
    weight = torch.randn(4, 3, *[3] * dims, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weight.requires_grad_(grad_on)
    stride = [2] * dims
    ours = {"envelope": Fn.gaussian_envelope(x, raw, 5, stride=2, impl=impl, spatial_dims=dims),
            "envelope_conv": Fn.envelope_conv(x, raw, 5, weight, None, padding=1, env_stride=2, impl=impl)}
    smoothed = envelope_decomposed(x, raw, 5, stride, "zeros")
    theirs = {"envelope": smoothed, "envelope_conv": _conv(dims)(smoothed, weight, None, 1, 1)}
    for name in ours:
        out = torch.relu_(ours[name])  # raised "a view ... modified inplace" in 1-D before
        torch.testing.assert_close(out, torch.relu(theirs[name]))
        if grad_on:
            ours_g = torch.autograd.grad(out.sum(), (x, raw))
            theirs_g = torch.autograd.grad(torch.relu(theirs[name]).sum(), (x, raw), retain_graph=True)
            for a, b in zip(ours_g, theirs_g):
                torch.testing.assert_close(a, b)


@pytest.mark.filterwarnings("ignore:where='downsample' selects no convolution")  # the stem alone, as meant
@pytest.mark.parametrize("dims", DIMS)
def test_a_converted_conv_then_an_in_place_relu_trains(dims):
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
    net = envconv.disentangle(torch.nn.Sequential(conv(1, 4, 3, stride=2), torch.nn.ReLU(inplace=True)))
    x = torch.randn(2, 1, *[12] * dims)
    net(x).sum().backward()
    sigma = net[0].envelope.raw_sigma
    assert sigma.grad is not None and torch.isfinite(sigma.grad).all() and sigma.grad.abs().sum() > 0
    net.eval()
    out = net(x)  # autograd on, eval mode: the same in-place op
    torch.testing.assert_close(out, torch.relu(net[0](x)))


BAD_GRADS = {"batch": (1, 3), "channels": (4, 1), "both": (1, 1)}


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("which", list(BAD_GRADS))
@pytest.mark.parametrize("dims", DIMS)
def test_the_backward_op_refuses_a_gradient_of_another_batch_or_channel_count(dims, which, impl):
    x = torch.randn(4, 3, *[8] * dims)
    n, c = BAD_GRADS[which]
    grad = torch.randn(n, c, *[8] * dims)
    op = torch.ops.envconv.envelope_backward
    with pytest.raises(RuntimeError, match=r"grad must be the envelope's output, \(4, 3"):
        op(grad, x, torch.zeros(3), 5, [1] * dims, "zeros", impl, True, True)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:  # the compiler and export see the same error
        with pytest.raises(RuntimeError, match="grad must be the envelope's output"):
            op(mode.from_tensor(grad), mode.from_tensor(x), mode.from_tensor(torch.zeros(3)), 5, [1] * dims,
               "zeros", impl, True, True)


def test_the_cpp_backward_itself_refuses_a_gradient_of_another_batch_or_channel_count():
    if not cpu.available():
        pytest.skip(f"the C++ kernel is not available: {cpu.unavailable_reason()}")
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    g = torch.ones(5, 3) / 5
    for shape in [(1, 3, 8, 8), (4, 1, 8, 8)]:
        grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        with pytest.raises(RuntimeError, match=r"grad_output must be \(N, C, OH, OW\)"):
            torch.ops.envconv._cpu_envelope_backward(grad, x, g, g, 1, 1, True)


@pytest.mark.parametrize("impl", ["auto", "separable", "full", "cpp", "triton"])
@pytest.mark.parametrize("channels", [1, 3])
def test_an_empty_batch_goes_forward_and_backward_through_every_op(impl, channels):
    needs(impl)
    x = torch.randn(0, channels, 9, 9, requires_grad=True)
    raw = torch.zeros(channels, requires_grad=True)
    y = Fn.gaussian_envelope(x, raw, 5, stride=2, impl=impl)
    assert y.shape == (0, channels, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(raw.grad, torch.zeros(channels))
    w = torch.randn(4, channels, 3, 3, requires_grad=True)
    for need_x in (True, False):  # without the input gradient: the stem's route
        xi = torch.randn(0, channels, 9, 9, requires_grad=need_x)
        r = torch.zeros(channels, requires_grad=True)
        out = Fn.envelope_conv2d(xi, r, 5, w, padding=1, impl=impl)
        assert out.shape == (0, 4, 9, 9)
        out.sum().backward()
        assert torch.equal(r.grad, torch.zeros(channels))


# ---- refused arguments: each named -------------------------------------------------------------------------

def test_the_full_kernel_for_2d_maps_refuses_other_dims_by_name():
    with pytest.raises(ValueError, match="impl='full' .* is for 2-D maps, got 1 spatial dims"):
        Fn.gaussian_envelope(torch.randn(1, 2, 9), torch.zeros(2), 5, impl="full", spatial_dims=1)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
def test_kernels_refuse_padding_they_lack_by_name(impl):
    with pytest.raises(ValueError, match="pads? with zeros, got padding_mode='reflect'"):
        Fn.gaussian_envelope(torch.randn(1, 2, 4, 5, 9), torch.zeros(2, 3), 5, "reflect", impl=impl, spatial_dims=3)


def test_wrong_shapes_strides_and_sizes_are_named():
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\) or \(C, D, H, W\), got 3 dims"):
        Fn.gaussian_envelope(torch.randn(2, 3, 8), torch.zeros(3), 5, spatial_dims=3)
    with pytest.raises(ValueError, match="stride must be a positive int or 3 of them"):
        Fn.gaussian_envelope(torch.randn(1, 3, 4, 4, 4), torch.zeros(3), 5, stride=(2, 2), spatial_dims=3)
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
        envconv.GaussianEnvelope(3, spatial_dims=4)
    with pytest.raises(ValueError, match=r"per-axis raw_sigma must have shape \(3, 2\) or \(1, 2\)"):
        Fn.gaussian_envelope(torch.randn(1, 3, 8, 8), torch.zeros(3, 3), 5)
    with pytest.raises(ValueError, match=r"per-axis raw_sigma must have shape \(3, 3\) or \(1, 3\)"):
        Fn.gaussian_envelope(torch.randn(1, 3, 4, 8, 8), torch.zeros(2, 3), 5, spatial_dims=3)
    with pytest.raises(RuntimeError, match="axis_sizes must be 2 odd positive ints .* largest is size=5"):
        torch.ops.envconv.envelope(torch.randn(2, 3, 6, 8), torch.zeros(3), 5, [1, 1], "zeros", "auto", [3, 7])


def test_reflect_refuses_a_map_smaller_than_one_axis_radius():
    x = torch.randn(1, 2, 4, 20)
    Fn.gaussian_envelope(x, torch.zeros(2), (7, 9), "reflect")  # r = 3 < 4 and 4 < 20
    with pytest.raises(ValueError, match=r"each spatial size > its r = \(4, 1\)"):
        Fn.gaussian_envelope(x, torch.zeros(2), (9, 3), "reflect")
