"""The envconv_* models behave as timm models: their own pretrained cfgs, the head interface, features."""

import pytest
import torch

from envconv import DisentangledConv2d, register_timm_models

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_timm_models()


def test_each_name_has_its_own_cfg_without_weights():
    model = timm.create_model("envconv_resnet18")
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == "envconv_resnet18" and not cfg.get("hf_hub_id") and not cfg.get("url")
    assert cfg["input_size"] == (3, 224, 224) and cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc"
    small = timm.create_model("envconv_small_resnet20")
    assert small.default_cfg["input_size"] == (3, 32, 32) and small.default_cfg["pool_size"] == (8, 8)
    data = timm.data.resolve_data_config({}, model=small)  # no silent 224x224 for a 32x32 model
    assert data["input_size"] == (3, 32, 32)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("envconv_resnet18", pretrained=True)


def test_small_resnet_head_interface_and_features():
    model = timm.create_model("envconv_small_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 8, 8)
    pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(pooled, features.mean((2, 3)))
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pooled)
    unpooled = timm.create_model("envconv_small_resnet20", num_classes=0, global_pool="").eval()
    assert unpooled(x).shape == (2, 64, 8, 8)
    net = timm.create_model("envconv_small_resnet20", features_only=True, out_indices=(1, 2, 3)).eval()
    maps = net(x)
    assert [m.shape[1:] for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert net.feature_info.channels() == [16, 32, 64] and net.feature_info.reduction() == [1, 2, 4]
    assert sum(isinstance(m, DisentangledConv2d) for m in net.modules()) == 5


@pytest.mark.parametrize("name", ["envconv_resnet18", "envconv_small_resnet20"])
def test_traced_torchscript_equals_eager_and_saves(name, tmp_path):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("raw_sigma"):
                p.normal_()
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.trace(model, x)
    torch.testing.assert_close(scripted(x), model(x))
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.pt"))(x), model(x))


def test_forward_intermediates_and_the_getter_feature_class_match_the_stage_outputs():
    torch.manual_seed(0)
    model = timm.create_model("envconv_small_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
        stages = [model.layer1(stem)]
        stages += [model.layer2(stages[0])]
        stages += [model.layer3(stages[1])]
        final, maps = model.forward_intermediates(x)
        assert len(maps) == 4
        for got, want in zip(maps, [stem, *stages]):
            torch.testing.assert_close(got, want)
        torch.testing.assert_close(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[0], stages[1])
        early, picked = model.forward_intermediates(x, indices=[-3], stop_early=True)
        torch.testing.assert_close(early, stages[0])
        torch.testing.assert_close(picked[0], stages[0])
    with pytest.raises(ValueError, match=r"feature indices \[4\] are out of range: 0 \(the stem\) to 3"):
        model.forward_intermediates(x, indices=[4])
    getter = timm.create_model("envconv_small_resnet20", features_only=True, feature_cls="getter", out_indices=(1, 2))
    getter.model.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("layer3", "fc"))})
    getter.eval()
    with torch.no_grad():
        out = getter(x)
    for got, want in zip(out, stages[:2]):
        torch.testing.assert_close(got, want)
    assert getter.feature_info.channels() == [16, 32]
    assert isinstance(getter.model.layer3, torch.nn.Identity)  # pruned after the last stage asked for
    assert sum(isinstance(m, DisentangledConv2d) for m in getter.modules()) == 3  # stem, layer2's two
    with pytest.raises(ValueError, match="feature_cls must be 'list' or 'getter'"):
        timm.create_model("envconv_small_resnet20", features_only=True, feature_cls="fx")
