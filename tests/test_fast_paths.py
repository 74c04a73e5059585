"""Every implementation of the envelope equals the reference, forward and backward, in both layouts."""

import itertools

import pytest
import torch
from torch import nn

from envconv import DisentangledConv2d, GaussianEnvelope
from envconv import functional as EF

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
CASES = list(itertools.product(["separable", "full", "auto"], [False, True], [1, 2, (2, 1)], [1, 3, 9]))
CASES += [("fused", layout, stride, size)
          for layout in (True, False) for stride in (1, 2, (2, 1)) for size in (1, 3, 9)]


def fused_available():
    from envconv import cpu_kernels

    return cpu_kernels.available()


def inputs(channels, dtype, channels_last, shape=(2, 11, 13)):
    torch.manual_seed(0)
    x = torch.randn(shape[0], channels, *shape[1:], dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    raw = (torch.randn(channels, dtype=dtype) * 0.7).requires_grad_()
    return x.requires_grad_(), raw


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("impl, channels_last, stride, size", CASES)
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_impl_matches_reference(dtype, impl, channels_last, stride, size, padding_mode):
    if impl == "fused" and (padding_mode != "zeros" or not fused_available()):
        pytest.skip("the fused kernel does zero padding on channels_last CPU tensors (and needs a C++ compiler)")
    for channels in (3, 16):
        x, raw = inputs(channels, dtype, channels_last)
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        want = EF.gaussian_envelope_reference(x, raw, size, padding_mode)[..., ::sh, ::sw]
        got = EF.gaussian_envelope(x, raw, size, padding_mode, stride=stride, impl=impl)
        torch.testing.assert_close(got, want, **TOL[dtype])
        upstream = torch.randn_like(want)
        want_grads = torch.autograd.grad(want, (x, raw), upstream)
        got_grads = torch.autograd.grad(got, (x, raw), upstream, allow_unused=True)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g if g is not None else torch.zeros_like(w), w, **TOL[dtype])


@pytest.mark.parametrize("impl", ["separable", "full"])
def test_gradcheck_strided(impl):
    x, raw = inputs(3, torch.float64, True, shape=(1, 7, 8))
    assert torch.autograd.gradcheck(lambda a, b: EF.gaussian_envelope(a, b, 5, stride=2, impl=impl), (x, raw))


def test_channels_last_is_kept():
    x, raw = inputs(16, torch.float32, True)
    for impl in ("separable", "full"):
        out = EF.gaussian_envelope(x, raw, 9, impl=impl)
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_choose_impl_rules():
    nchw = torch.empty(1, 3, 224, 224)
    assert EF.choose_impl(nchw, 9, needs_grad=True) == "separable"  # the stem in NCHW: batch folded
    assert EF.choose_impl(nchw.contiguous(memory_format=torch.channels_last), 9, needs_grad=True) == "separable"
    assert EF.choose_impl(torch.empty(1, 128, 56, 56), 3, needs_grad=True) == "full"
    assert EF.choose_impl(torch.empty(1, 128, 56, 56), 9, needs_grad=True) == "separable"
    assert EF.choose_impl(torch.empty(1, 512, 14, 14), 9, needs_grad=False) == "full"
    with pytest.raises(ValueError, match="impl must be one of"):
        EF.gaussian_envelope(nchw, torch.zeros(3), 3, impl="fft")


@pytest.mark.parametrize("channels_last", [False, True])
def test_strided_identity_conv_samples_the_envelope(channels_last):
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 16, 1, stride=2, bias=True).double()
    conv = DisentangledConv2d.from_conv(plain, envelope_size=9)
    with torch.no_grad():
        conv.envelope.raw_sigma.normal_()
    x, _ = inputs(8, torch.float64, channels_last, shape=(2, 15, 12))
    want = plain(EF.gaussian_envelope_reference(x, conv.envelope.raw_sigma, 9))
    torch.testing.assert_close(conv(x), want, rtol=1e-12, atol=1e-12)
    gw = torch.autograd.grad(want.sum(), conv.envelope.raw_sigma)[0]
    gc = torch.autograd.grad(conv(x).sum(), conv.envelope.raw_sigma)[0]
    torch.testing.assert_close(gc, gw, rtol=1e-12, atol=1e-12)


def test_kernel_cache_follows_sigma_and_size_in_eval():
    env = GaussianEnvelope(4, size=9).eval()
    x = torch.randn(1, 4, 10, 10)
    with torch.no_grad():
        first = env(x)
        torch.testing.assert_close(first, EF.gaussian_envelope_reference(x, env.raw_sigma, 9))
        env.raw_sigma.add_(1.0)  # an optimizer step changes the parameter in place
        torch.testing.assert_close(env(x), EF.gaussian_envelope_reference(x, env.raw_sigma, 9))
        env.size = 3
        torch.testing.assert_close(env(x), EF.gaussian_envelope_reference(x, env.raw_sigma, 3))
        env.load_state_dict({"raw_sigma": torch.zeros(4)})
        torch.testing.assert_close(env(x), EF.gaussian_envelope_reference(x, torch.zeros(4), 3))
    # with gradients enabled the kernel is rebuilt, so sigma gets its gradient
    env(x).sum().backward()
    assert env.raw_sigma.grad is not None and float(env.raw_sigma.grad.abs().sum()) > 0


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
    conv.envelope.impl = "separable"  # autograd through the 1-D passes keeps two maps without recomputing
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
    assert sizes[False] >= sizes[True] + 2 * feature_map - 1  # autograd also keeps two smoothed maps


def test_fused_kernel_shared_sigma_gradcheck_and_fallback(monkeypatch):
    from envconv import cpu_kernels

    if not fused_available():
        pytest.skip("no C++ compiler: the fused kernel could not be built")
    x, _ = inputs(16, torch.float64, True, shape=(1, 6, 7))
    shared = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cpu_kernels.fused_envelope(a, b, 5, (2, 1)), (x, shared))
    assert EF.choose_impl(x, 9, True, fused=True) == "fused"
    assert EF.choose_impl(x, 9, True, fused=True, padding_mode="reflect") == "separable"
    assert EF.choose_impl(x.contiguous(), 9, True, fused=True) == "fused"  # NCHW in training: converted
    assert EF.choose_impl(x.contiguous(), 9, False, fused=True) == "full"  # NCHW inference: stays
    assert EF.choose_impl(x[:, :3].contiguous(memory_format=torch.channels_last), 9, True, fused=True) == "fused"
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_failed", "no compiler")
    assert EF.choose_impl(x, 9, True, fused=True) == "separable"
    with pytest.raises(RuntimeError, match="not available: no compiler"):
        cpu_kernels.fused_envelope(x, shared, 5)
    with pytest.raises(ValueError, match="float32/float64 CPU tensor"):
        cpu_kernels.fused_envelope(x.half(), shared, 5)


def test_recomputing_backward_with_the_fused_kernel():
    if not fused_available():
        pytest.skip("no C++ compiler: the fused kernel could not be built")
    torch.manual_seed(0)
    conv = DisentangledConv2d(16, 8, 1, stride=2, bias=False, envelope_size=7, dtype=torch.float64)
    with torch.no_grad():
        conv.envelope.raw_sigma.normal_()
    x = torch.randn(2, 16, 9, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert conv.envelope.resolve_impl(x) == "fused"
    results = []
    for impl in ("fused", "separable"):
        conv.envelope.impl = impl
        y = conv(x)
        results.append((y, torch.autograd.grad(y, (x, conv.weight, conv.envelope.raw_sigma), torch.cos(y))))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_whole_model_same_gradients_in_both_layouts_and_all_paths():
    """A converted ResNet in channels_last (fused kernel, recomputing backward) matches NCHW autograd."""
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
