"""The layers' routes through the envconv ops: the strided identity, the recomputing backward, both layouts."""

import pytest
import torch
from torch import nn

import reference as ref
from envconv import DisentangledConv2d
from envconv.ops import cpu


def fused_available():
    return cpu.available()


def inputs(channels, dtype, channels_last, shape=(2, 11, 13)):
    torch.manual_seed(0)
    x = torch.randn(shape[0], channels, *shape[1:], dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    raw = (torch.randn(channels, dtype=dtype) * 0.7).requires_grad_()
    return x.requires_grad_(), raw


@pytest.mark.parametrize("channels_last", [False, True])
def test_strided_identity_conv_samples_the_envelope(channels_last):
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 16, 1, stride=2, bias=True).double()
    conv = DisentangledConv2d.from_conv(plain, envelope_size=9)
    with torch.no_grad():
        conv.envelope.raw_sigma.normal_()
    x, _ = inputs(8, torch.float64, channels_last, shape=(2, 15, 12))
    raw = conv.envelope.raw_sigma.detach().numpy()
    smoothed = torch.from_numpy(ref.envelope(x.detach().numpy(), raw, 9)).requires_grad_()
    want = plain(smoothed)
    torch.testing.assert_close(conv(x), want, rtol=1e-12, atol=1e-12)
    grad_smoothed = torch.autograd.grad(want.sum(), smoothed)[0][..., ::2, ::2]  # what the strided 1x1 conv reads
    _, want_graw = ref.envelope_vjp(x.detach().numpy(), raw, 9, grad_smoothed.numpy(), stride=(2, 2))
    got = torch.autograd.grad(conv(x).sum(), conv.envelope.raw_sigma)[0]
    torch.testing.assert_close(got, torch.from_numpy(want_graw), rtol=1e-6, atol=1e-7)
    # dispatch, 8 channels (the pass-per-axis rule): a contiguous map's strided forward in C++, a
    # channels_last one's in one k x k conv (a 15 x 12 map)
    from envconv.ops import cpu

    assert conv.envelope.resolve_impl(x, stride=2) == ("cpp" if not channels_last and cpu.available() else "full")


CONV_CASES = [dict(kernel_size=3, stride=2, padding=1, bias=True), dict(kernel_size=1, stride=2, padding=0, bias=False),
              dict(kernel_size=3, stride=1, padding=2, dilation=2, groups=2, bias=True)]


@pytest.mark.parametrize("cfg", CONV_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("input_grad", [True, False])
def test_recomputing_backward_equals_autograd(cfg, channels_last, input_grad):
    torch.manual_seed(0)
    conv = DisentangledConv2d(4, 6, envelope_size=5, dtype=torch.float64, **cfg)
    with torch.no_grad():
        conv.envelope.raw_sigma.normal_()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(input_grad)
    params = [p for p in conv.parameters()]
    wanted = params + ([x] if input_grad else [])
    grads = {}
    for recompute in (False, True):
        conv.recompute_envelope = recompute
        y = conv(x)
        upstream = torch.ones_like(y) * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        grads[recompute] = (y, torch.autograd.grad(y, wanted, upstream))
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(grads[True][1], grads[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_recomputing_backward_gradcheck_and_saves_only_the_input():
    conv = DisentangledConv2d(8, 4, 3, stride=2, padding=1, envelope_size=5, dtype=torch.float64)
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64, requires_grad=True)
    names = ["weight", "bias", "envelope.raw_sigma"]

    def f(inp, *values):
        return torch.func.functional_call(conv, dict(zip(names, values)), (inp,))

    assert torch.autograd.gradcheck(f, (x, *[conv.get_parameter(n).detach().requires_grad_() for n in names]))
    sizes = {}
    for recompute in (False, True):
        conv.recompute_envelope = recompute
        saved = {}

        def pack(t, saved=saved):
            saved[t.untyped_storage().data_ptr()] = t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            conv(x)
        sizes[recompute] = sum(saved.values())
    feature_map = x.numel()
    assert sizes[True] <= feature_map + 8 + 4 * 8 * 9  # the input, sigma and the weight
    assert sizes[False] >= sizes[True] + feature_map - 1  # the plain conv also keeps the smoothed map


def test_recomputing_backward_with_the_fused_kernel():
    if not fused_available():
        pytest.skip("no C++ compiler: the C++ kernel could not be built")
    torch.manual_seed(0)
    conv = DisentangledConv2d(16, 8, 1, stride=2, bias=False, envelope_size=7, dtype=torch.float64)
    with torch.no_grad():
        conv.envelope.raw_sigma.normal_()
    x = torch.randn(2, 16, 9, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert conv.envelope.resolve_impl(x) == "cpp"
    results = []
    for impl in ("cpp", "separable"):
        conv.envelope.impl = impl
        y = conv(x)
        results.append((y, torch.autograd.grad(y, (x, conv.weight, conv.envelope.raw_sigma), torch.cos(y))))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_whole_model_same_gradients_in_both_layouts_and_all_paths():
    """A converted ResNet in channels_last (C++ kernel, recomputing backward) matches NCHW autograd."""
    import copy

    from envconv import create_model

    torch.manual_seed(0)
    reference = create_model("small_resnet20", num_classes=5, in_chans=1).double().train()
    for layer in reference.modules():
        if isinstance(layer, DisentangledConv2d):
            layer.recompute_envelope = False
            layer.envelope.impl = "separable"
    fast = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    for layer in fast.modules():
        if isinstance(layer, DisentangledConv2d):
            layer.recompute_envelope, layer.envelope.impl = True, "auto"
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 4])
    for model, inp in ((reference, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        nn.functional.cross_entropy(model(inp), y).backward()
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    with torch.inference_mode():  # and the fast paths under inference mode, at the training size
        torch.testing.assert_close(fast.eval()(x.contiguous(memory_format=torch.channels_last)),
                                   reference.eval()(x), rtol=1e-10, atol=1e-12)
