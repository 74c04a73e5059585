"""envconv.disentangle on real networks: the paper's placement, counts, FLOPs, identity at sigma 0."""

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import envconv
import reference as ref
from envconv import DisentangledConv2d, disentangle, envelopes, select_layers, shrink
from envconv.convert import auto_envelope_size
from envconv.envelope import GaussianEnvelope

torchvision = pytest.importorskip("torchvision")


def tv(name, **kw):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kw)


# The paper's layers (Fig. 5a/5b), written out by hand: the stem, and in the first block of
# stages 2-4 the strided 3x3 conv of the residual path and the 1x1 conv of the identity path.
def paper_layers(strided_conv):
    return ["conv1"] + [f"layer{s}.0.{c}" for s in (2, 3, 4) for c in (strided_conv, "downsample.0")]


@pytest.mark.parametrize(
    "name, strided",
    [("resnet18", "conv1"), ("resnet34", "conv1"), ("resnet50", "conv2"), ("resnet101", "conv2"),
     ("resnext50_32x4d", "conv2"), ("wide_resnet50_2", "conv2")],
)
def test_downsample_rule_selects_exactly_the_papers_layers(name, strided):
    model = disentangle(tv(name))
    converted = [n for n, m in model.named_modules() if isinstance(m, DisentangledConv2d)]
    assert converted == paper_layers(strided)
    assert [r.name for r in envelopes(model)] == converted


def test_timm_resnet50_gets_the_same_layers_and_parameters():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet50", pretrained=False)
    before = sum(p.numel() for p in model.parameters())
    disentangle(model)
    assert [r.name for r in envelopes(model)] == paper_layers("conv2")
    assert sum(p.numel() for p in model.parameters()) - before == 2691


def test_resnet50_parameter_counts():
    plain = sum(p.numel() for p in tv("resnet50").parameters())
    per_channel = sum(p.numel() for p in disentangle(tv("resnet50")).parameters())
    shared = sum(p.numel() for p in disentangle(tv("resnet50"), shared_sigma=True).parameters())
    assert per_channel - plain == 3 + 128 + 256 + 256 + 512 + 512 + 1024 == 2691
    assert shared - plain == 7


def test_paths_lists_patterns_and_predicates():
    assert select_layers(tv("resnet50"), "residual") == ["conv1", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]
    assert select_layers(tv("resnet50"), "identity", stem="none") == [f"layer{s}.0.downsample.0" for s in (2, 3, 4)]
    assert select_layers(tv("resnet18"), ["layer*.0.conv2"], stem="none") == [
        f"layer{s}.0.conv2" for s in (1, 2, 3, 4)]
    assert select_layers(tv("resnet18"), ["conv1"], stem="none") == ["conv1"]  # a listed stem stays
    assert select_layers(tv("resnet18"), lambda n, m: m.kernel_size == (1, 1), stem="none") == [
        f"layer{s}.0.downsample.0" for s in (2, 3, 4)]


def test_untouched_layers_keep_their_state_and_converted_ones_their_weights():
    original = tv("resnet50")
    reference_state = {k: v.clone() for k, v in original.state_dict().items()}
    model = disentangle(original, where="residual")
    state = model.state_dict()
    for key, value in reference_state.items():  # every original entry, converted layers' weights included
        assert torch.equal(state[key], value), key
    added = sorted(set(state) - set(reference_state))
    assert added == sorted(f"{n}.{key}" for n in select_layers(model, "residual")
                           for key in ("envelope.raw_sigma", "envelope._extra_state", "_extra_state"))
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d) and not isinstance(
        model.layer2[0].downsample[0], DisentangledConv2d)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_sigma_zero_gives_the_original_logits(name):
    plain = tv(name).double().eval()  # float64: the sampled strided 1x1 convs round differently in float32
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)  # the same arithmetic as at 224 x 224, a twelfth of the work
    with torch.no_grad():
        want = plain(x)
        model = disentangle(plain, method="fixed", sigma=0.0)
        got = model(x)
    assert len(envelopes(model)) >= 5
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# envelope input (C, H, W) at each of ResNet-50's converted layers at 224 x 224: stem, residual, identity
STEM_AND_RESIDUAL = [(3, 224, 224), (128, 56, 56), (256, 28, 28), (512, 14, 14)]
IDENTITY = [(256, 56, 56), (512, 28, 28), (1024, 14, 14)]


def paper_macs(k):
    """The paper's count: two 1-D passes of k multiply-adds per element, 2 k C H W per layer."""
    return sum(2 * k * c * h * w for c, h, w in STEM_AND_RESIDUAL + IDENTITY)


def count_flops(fn, *args):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize("k, paper_gmacs", [(9, 0.041), (3, 0.0135)])
def test_flops_of_the_envelopes_on_resnet50(k, paper_gmacs):
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = disentangle(tv("resnet50"), envelope_size=k).eval()
    inputs = {}
    for row in envelopes(model):
        model.get_submodule(row.name).register_forward_pre_hook(
            lambda m, i, name=row.name: inputs.update({name: tuple(i[0].shape)}))
    with FakeTensorMode(allow_non_fake_inputs=True):  # counted from the fake kernels and formulas, no arithmetic
        model(torch.empty(1, 3, 224, 224))
        # each envelope at full resolution, as the paper counts it (Table 1f: 3.84 -> 3.89 / 3.86 GFLOPs)
        full = sum(count_flops(model.get_submodule(n).envelope, torch.empty(shape)) for n, shape in inputs.items()) / 2
    assert full == pytest.approx(paper_macs(k), rel=0.03)
    assert full / 1e9 == pytest.approx(paper_gmacs, rel=0.03)


def stage1_output_shape(model):
    shapes = []
    model.layer1.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 96, 96))
    return shapes[0]


@pytest.mark.parametrize("name, strided", [("resnet18", "conv1"), ("resnet50", "conv2")])
def test_modified_stem_fig5c(name, strided):
    want = stage1_output_shape(tv(name))
    model = disentangle(tv(name), stem="modified")
    assert isinstance(model.maxpool, nn.Identity)
    block = model.layer1[0]
    assert getattr(block, strided).stride == (2, 2) and block.downsample[0].stride == (2, 2)
    assert isinstance(block.downsample[1], nn.BatchNorm2d)
    names = [r.name for r in envelopes(model)]
    assert names == ["conv1", f"layer1.0.{strided}", "layer1.0.downsample.0"] + paper_layers(strided)[1:]
    assert stage1_output_shape(model) == want


def test_non_resnet_cnn_through_the_general_rule():
    model = disentangle(tv("mobilenet_v2"))
    strided = [n for n, m in tv("mobilenet_v2").named_modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert [r.name for r in envelopes(model)] == strided and len(strided) == 5
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_keeps_device_dtype_and_mode():
    model = tv("resnet18").double().eval()
    disentangle(model, method="dw")
    env = model.layer2[0].conv1.envelope
    assert env.weight_x.dtype == torch.float64 and not model.layer2[0].conv1.training
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("method", ["gaussian", "dw", "proj", "se", "param-attention", "adaptive-attention",
                                    "multiplicative", "ensemble", "cbs"])
def test_every_method_converts_a_resnet_and_trains_a_step(method):
    torch.manual_seed(0)
    model = disentangle(tv("resnet18", num_classes=3), method=method, **({"envelope_size": 3}
                                                                       if method == "adaptive-attention" else {}))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    nn.functional.cross_entropy(model(x), y).backward()
    new = [p for n, p in model.named_parameters() if "envelope" in n or n.endswith(("proj_weight", "se_alpha"))
           or (n.endswith("raw_sigma"))]
    assert all(p.grad is not None for p in new)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown method"):
        disentangle(tv("resnet18"), method="blur")
    with pytest.raises(ValueError, match="where must be one of"):
        disentangle(tv("resnet18"), where="everywhere")
    with pytest.raises(ValueError, match="stem must be one of"):
        disentangle(tv("resnet18"), stem="deep")
    with pytest.raises(ValueError, match="'layer9.0.conv1' matches no convolution"):
        disentangle(tv("resnet18"), where=["layer9.0.conv1"])
    with pytest.raises(ValueError, match="has no nn.Conv2d"):
        disentangle(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="selects no convolution"):
        disentangle(tv("mobilenet_v2"), where="identity")
    with pytest.raises(ValueError, match="needs a ResNet"):
        disentangle(tv("mobilenet_v2"), stem="modified")
    with pytest.raises(ValueError, match=r"needs option\(s\) \['sigma'\]"):
        disentangle(tv("resnet18"), method="fixed")
    with pytest.raises(ValueError, match="does not take"):
        disentangle(tv("resnet18"), method="none", envelope_size=9)
    with pytest.raises(TypeError, match="already converted"):
        disentangle(disentangle(tv("resnet18")))


def test_method_none_is_the_unchanged_baseline():
    model = tv("resnet18")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    disentangle(model, method="none")
    assert not envelopes(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_shrink_auto_picks_the_smallest_size_keeping_the_mass():
    # hand value: sigma^2 = log 2 at size 9: 3 taps keep (1.972 / 2.087)^2 = 0.893, 5 taps 0.997
    assert auto_envelope_size(GaussianEnvelope(1, 9)) == 5
    for sigma in (0.0, 0.3, 0.6, 1.0, 1.5, 2.5):
        env = GaussianEnvelope.fixed(2, [0.1, sigma], size=9)
        raw = np.log(np.expm1(max(sigma, 0.1) ** 2))  # the widest channel
        k = ref.kernel1d(raw, 9)[0]
        masses = {s: k[4 - s // 2 : 4 + s // 2 + 1].sum() ** 2 for s in (1, 3, 5, 7, 9)}
        want = min([s for s, m in masses.items() if m >= 0.99] + [9])
        assert auto_envelope_size(env, eps=0.01) == want, sigma
    model = disentangle(tv("resnet18"))
    shrink(model, "auto", eps=0.2)
    assert {r.size for r in envelopes(model)} == {3}  # 89% >= 80%
    with pytest.raises(ValueError, match="eps"):
        shrink(model, "auto", eps=0.0)


class _Reused(nn.Module):
    """One convolution object at two places, and two convolutions sharing one weight Parameter."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.b = self.a
        self.c = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.d = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.d.weight = self.c.weight

    def forward(self, x):
        x = self.stem(x)
        return self.d(self.c(self.b(self.a(x))))


def test_a_module_used_twice_stays_one_module_and_tied_weights_stay_tied():
    torch.manual_seed(0)
    net = _Reused()
    x = torch.randn(2, 3, 32, 32)
    before = net(x)
    disentangle(net)
    assert isinstance(net.a, DisentangledConv2d) and net.b is net.a  # one replacement at both places
    assert net.d.weight is net.c.weight  # the tie of the Parameter is kept
    params = dict(net.named_parameters())
    assert "b.weight" not in params and "d.weight" not in params  # still shared, listed once
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, GaussianEnvelope):
                m.raw_sigma.fill_(-1e4)  # sigma -> 0: the identity, so the logits are the original ones
    torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)
    net(x).sum().backward()
    assert net.c.weight.grad is not None and net.c.weight.grad.abs().sum() > 0


def test_scripted_modules_are_refused_by_disentangle_and_shrink():
    model = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, stride=2)))
    with pytest.raises(TypeError, match="disentangle\\(\\) cannot change a TorchScript module"):
        disentangle(model)
    converted = disentangle(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, stride=2)))
    traced = torch.jit.trace(converted, torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="shrink\\(\\) cannot change a TorchScript module"):
        shrink(traced, 3)


def _tf_same_models():
    """Nets built of TF-"same" convolutions: timm's tf_* models, efficientnet-pytorch, smp's efficientnet encoder."""
    timm = pytest.importorskip("timm", reason="timm is not installed")
    yield "timm tf_efficientnet_b0", timm.create_model("tf_efficientnet_b0", num_classes=10), "Conv2dSame"
    yield "timm tf_mixnet_s", timm.create_model("tf_mixnet_s", num_classes=10), "Conv2dSame"
    try:
        from efficientnet_pytorch import EfficientNet
    except ImportError:
        pass
    else:
        yield ("efficientnet-pytorch b0", EfficientNet.from_name("efficientnet-b0", image_size=64, num_classes=10),
               "Conv2dStaticSamePadding")
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        pass
    else:
        yield "smp Unet efficientnet-b0", smp.Unet("efficientnet-b0", encoder_weights=None, classes=2), \
            "Conv2dStaticSamePadding"


def test_tf_same_networks_convert_at_the_papers_rule_and_equal_the_plain_net_at_sigma_zero():
    x = torch.randn(2, 3, 64, 64)
    for label, plain, kind in _tf_same_models():
        plain.eval()
        same = [n for n, m in plain.named_modules() if type(m).__name__ == kind]
        with torch.no_grad():
            want = plain(x)
            model = disentangle(plain, method="fixed", sigma=0.0)
            got = model(x)
        converted = [e.name for e in envelopes(model)]
        assert len(converted) >= 5 and set(converted) & set(same), label  # TF-"same" layers among them
        assert all(model.get_submodule(n).tf_same is not None for n in set(converted) & set(same)), label
        assert torch.equal(got, want), label


@pytest.mark.parametrize("name, pools", [("res2net50_26w_4s", ["layer2.0.pool", "layer3.0.pool", "layer4.0.pool"]),
                                         ("resnet50d", ["layer2.0.downsample.0", "layer3.0.downsample.0",
                                                        "layer4.0.downsample.0"])])
def test_the_default_placement_names_the_strided_pools_it_leaves_in_converted_blocks(name, pools):
    # Res2Net's fourth split and ResNet-D's shortcut downsample through a pool: it was left out silently
    timm = pytest.importorskip("timm")
    with pytest.warns(UserWarning, match=re.escape(f"leaves 3 strided pool(s) in the converted blocks without an "
                                                   f"envelope ({', '.join(pools)})")):
        disentangle(timm.create_model(name))
    covered = timm.create_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # covered: nothing to say
        disentangle(covered, where="downsample+pools")
    assert all(isinstance(covered.get_submodule(p), envconv.EnvelopePool2d) for p in pools)


def test_a_resnets_stem_pool_is_left_out_without_a_warning():
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        disentangle(torchvision.models.resnet18())  # the max-pool after the stem: the paper's placement
