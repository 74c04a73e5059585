"""create_model: envconv, torchvision and timm names, and the timm registration."""

import pytest
import torch
from torch import nn

import envconv
from envconv import create_model, envelopes, list_models
from envconv.recipes.config import validate_config
from envconv.recipes.rundir import load_checkpoint, model_from_checkpoint
from envconv.state_dict import atomic_save


def test_create_model_defaults_to_the_papers_conversion_and_none_is_the_baseline():
    model = create_model("small_resnet20", num_classes=10)
    assert len(envelopes(model)) == 5
    baseline = create_model("small_resnet20", num_classes=10, method="none")
    assert envelopes(baseline) == []
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in baseline.parameters())
    assert extra == 3 + 16 + 16 + 32 + 32


def test_torchvision_names_and_in_chans():
    pytest.importorskip("torchvision")
    model = create_model("resnet50", num_classes=7, in_chans=1, method="fixed", sigma=0.0).eval()
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)
    assert "torchvision:resnet50" in list_models(include_torchvision=True)
    model = create_model("torchvision:mobilenet_v2", num_classes=3, method="proj").eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_timm_names_and_registration():
    timm = pytest.importorskip("timm")
    from envconv import register_timm_models

    model = create_model("timm:resnet50", num_classes=5, in_chans=1)
    assert [r.channels for r in envelopes(model)] == [1, 128, 256, 256, 512, 512, 1024]
    names = register_timm_models()
    assert {"envconv_resnet50", "envconv_small_resnet20"} <= set(names)
    assert register_timm_models() == names  # idempotent
    net = timm.create_model("envconv_small_resnet20", num_classes=10, in_chans=1, method="dw")
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert isinstance(net.conv1.envelope, nn.Module) and type(net.conv1.envelope).__name__ == "DepthwiseEnvelope"
    net = timm.create_model("envconv_resnet18", num_classes=4, stem="modified", drop_path_rate=0.1)
    assert isinstance(net.maxpool, nn.Identity) and len(envelopes(net)) == 9
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("envconv_resnet18", pretrained=True)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown model source"):
        create_model("hub:resnet50")
    with pytest.raises(ValueError, match="takes only 'norm' and 'global_pool' in model_kwargs"):
        create_model("small_resnet20", model_kwargs={"drop_rate": 0.1})
    with pytest.raises(ValueError, match="unknown model|no classification model"):
        create_model("torchvision:not_a_model")
    with pytest.raises(ValueError, match="unknown model"):
        create_model("not_a_model_at_all")


def test_model_from_checkpoint_checks_the_weights(tmp_path):
    config = validate_config({"model": {"name": "small_resnet20", "num_classes": 3, "in_chans": 1}})
    model = envconv.create_model("small_resnet20", num_classes=3, in_chans=1)
    with torch.no_grad():
        model.conv1.envelope.raw_sigma.fill_(1.5)
    atomic_save({"model": model.state_dict(), "config": config, "epoch": 4}, tmp_path / "a.pt")
    loaded, ckpt = model_from_checkpoint(tmp_path / "a.pt")
    assert ckpt["epoch"] == 4 and not loaded.training
    assert torch.equal(loaded.conv1.envelope.raw_sigma, torch.tensor([1.5]))
    other = envconv.create_model("small_resnet20", num_classes=5, in_chans=1)
    atomic_save({"model": other.state_dict(), "config": config, "epoch": 4}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="do not fit the model its config describes"):
        model_from_checkpoint(tmp_path / "b.pt")
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_with_a_foreign_config_is_refused_naming_the_file(tmp_path):
    import torch

    from envconv.recipes.rundir import load_checkpoint

    for config in ({"model": {"name": 5}}, {"optimizer": "adam"}, "not a mapping"):
        path = tmp_path / "foreign.pt"
        torch.save({"model": {}, "config": config, "epoch": 1}, path)
        with pytest.raises(ValueError, match="foreign.pt: its config"):
            load_checkpoint(path)
