"""The peer libraries as comparison methods (envconv.recipes.peers): their places, a training step, kornia = ours."""

import copy

import pytest
import torch
from torch import nn

import envconv
from envconv.recipes import peers

PLACES = ["conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1", "layer3.0.downsample.0"]


def _model(method, **options):
    torch.manual_seed(0)
    return envconv.create_model("small_resnet20", num_classes=3, in_chans=1, method=method, **options)


def _kinds(model):
    return {name: type(model.get_submodule(name)).__name__ for name in PLACES}


def _one_step(model):
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert sum(changed) > len(changed) // 2  # the step trained the network, not a detached copy of it


def test_dcls_replaces_the_kxk_convs_at_the_places_and_leaves_the_1x1_ones():
    pytest.importorskip("DCLS", reason="dcls is not installed")
    model = _model("dcls", dilated_kernel_size=5)
    assert _kinds(model) == {"conv1": "Dcls2d", "layer2.0.conv1": "Dcls2d", "layer2.0.downsample.0": "Conv2d",
                             "layer3.0.conv1": "Dcls2d", "layer3.0.downsample.0": "Conv2d"}
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv1.dilated_kernel_size == (5, 5)
    _one_step(model)


def test_a_frozen_dcls_model_is_plain_convolutions_with_the_same_outputs():
    pytest.importorskip("DCLS", reason="dcls is not installed")
    model = _model("dcls", dilated_kernel_size=5).double().eval()
    with torch.no_grad():  # DCLS's positions and sigmas away from their initial values
        for name, p in model.named_parameters():
            if name.endswith((".P", ".SIG")):
                p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    expected = model(x)
    frozen = peers.freeze_dcls(copy.deepcopy(model))
    assert _kinds(frozen) == {"conv1": "Conv2d", "layer2.0.conv1": "Conv2d", "layer2.0.downsample.0": "Conv2d",
                              "layer3.0.conv1": "Conv2d", "layer3.0.downsample.0": "Conv2d"}
    assert frozen.layer2[0].conv1.kernel_size == (5, 5) and frozen.layer2[0].conv1.stride == (2, 2)
    torch.testing.assert_close(frozen(x), expected, rtol=1e-12, atol=1e-12)


def test_envelope_after_is_envconvs_envelope_at_antialiased_cnns_place_and_the_plain_net_at_sigma_zero():
    model = _model("envelope-after")
    assert _kinds(model) == {"conv1": "Conv2d", "layer2.0.conv1": "Sequential",
                             "layer2.0.downsample.0": "DisentangledConv2d", "layer3.0.conv1": "Sequential",
                             "layer3.0.downsample.0": "DisentangledConv2d"}
    conv, envelope = model.layer2[0].conv1
    assert conv.stride == (1, 1) and envelope.order == "pool-env" and envelope.stride == [2, 2]
    _one_step(model)
    plain = _model("none").double().eval()
    converted = envconv.disentangle(copy.deepcopy(plain), method="envelope-after").eval()
    with torch.no_grad():
        for name, p in converted.named_parameters():
            if name.endswith("raw_sigma"):
                p.fill_(-1e4)  # sigma -> 0: the delta envelope
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=1e-12)


def test_blurpool_moves_the_stride_into_antialiased_cnns_blur():
    aa = pytest.importorskip("antialiased_cnns", reason="antialiased-cnns is not installed")
    model = _model("blurpool")
    assert type(model.conv1) is nn.Conv2d  # the stem has no stride: unchanged
    conv, blur = model.layer2[0].conv1
    assert isinstance(blur, aa.BlurPool) and conv.stride == (1, 1) and blur.stride == 2
    blur, conv = model.layer2[0].downsample[0]  # a strided 1x1: blurred first, as antialiased-cnns' ResNets do
    assert isinstance(blur, aa.BlurPool) and conv.stride == (1, 1) and conv.kernel_size == (1, 1)
    x = torch.randn(2, 16, 8, 8)
    want = nn.functional.conv2d(blur(x), conv.weight)  # the module is the blur then the conv
    torch.testing.assert_close(model.layer2[0].downsample[0](x), want)
    _one_step(model)


def test_blur_before_is_timms_binomial_blur_then_the_unchanged_conv():
    timm_layers = pytest.importorskip("timm.layers", reason="timm is not installed")
    model = _model("blur-before")
    blur, conv = model.layer2[0].conv1
    assert isinstance(blur, timm_layers.BlurPool2d) and conv.stride == (2, 2)
    # binomial [1, 2, 1] / 4 per axis with reflect padding, by hand
    x = torch.randn(1, 16, 6, 7, dtype=torch.float64)
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) / 4
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    want = sum(taps[i] * taps[j] * padded[..., i:i + 6, j:j + 7] for i in range(3) for j in range(3))
    torch.testing.assert_close(copy.deepcopy(blur).double()(x), want)
    _one_step(model)


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-layer"])
def test_kornias_learned_blur_computes_envconvs_envelope_with_the_same_sigma_gradient(per_channel):
    pytest.importorskip("kornia", reason="kornia is not installed")
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, 3, stride=2, padding=1).double()
    layer = peers.KorniaBlurConv2d(conv, size=9, per_channel=per_channel)
    with torch.no_grad():
        layer.raw_sigma.normal_()
    ours = envconv.DisentangledConv2d.from_conv(conv, envelope_size=9, shared_sigma=not per_channel)
    with torch.no_grad():
        ours.envelope.raw_sigma.copy_(layer.raw_sigma)
    x = torch.randn(3, 5, 12, 11, dtype=torch.float64)
    a, b = layer(x), ours(x)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    (ga,) = torch.autograd.grad(a.square().sum(), layer.raw_sigma)
    (gb,) = torch.autograd.grad(b.square().sum(), ours.envelope.raw_sigma)
    torch.testing.assert_close(ga, gb, rtol=1e-8, atol=1e-10)
    _one_step(_model("kornia-blur", envelope_size=9))


def test_a_missing_peer_package_is_named(monkeypatch):
    import builtins

    real = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.startswith("antialiased_cnns"):
            raise ImportError("no module")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(ImportError, match=r"needs the 'antialiased-cnns' package \(pip install antialiased-cnns\)"):
        _model("blurpool")
    assert set(peers.PEERS) <= set(envconv.METHODS)


def test_the_peers_page_table_states_what_the_packages_offer():
    """docs/peers.md's feature table, row by row, against the installed packages."""
    import inspect

    kornia_filters = pytest.importorskip("kornia.filters", reason="kornia is not installed")
    blurpool = pytest.importorskip("antialiased_cnns.blurpool", reason="antialiased-cnns is not installed")
    timm_layers = pytest.importorskip("timm.layers", reason="timm is not installed")
    dcls = pytest.importorskip("DCLS.construct.modules", reason="dcls is not installed")
    assert "stride" not in inspect.signature(kornia_filters.gaussian_blur2d).parameters  # no stride
    assert not hasattr(kornia_filters, "gaussian_blur3d") and hasattr(kornia_filters, "get_gaussian_kernel3d")
    assert hasattr(blurpool, "BlurPool1D") and not hasattr(blurpool, "BlurPool3D")
    assert not [n for n in dir(timm_layers) if n.startswith("BlurPool") and n != "BlurPool2d"]  # 2-D only
    assert "stride" in inspect.signature(timm_layers.BlurPool2d).parameters
    assert {"Dcls1d", "Dcls2d", "Dcls3d"} <= set(dir(dcls))
    for module in (blurpool.BlurPool(4), timm_layers.BlurPool2d(4)):  # fixed: no parameter to learn
        assert not list(module.parameters())
