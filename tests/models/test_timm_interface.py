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
def test_torchscript_equals_eager_and_saves(name, tmp_path):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("raw_sigma"):
                p.normal_()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(scripted(x), model(x))
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.pt"))(x), model(x))
