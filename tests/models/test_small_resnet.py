"""envconv's small-image ResNets."""

import pytest
import torch
from torch import nn

from envconv import create_model, envelopes
from envconv.models import SMALL_RESNETS, SmallResNet, small_resnet


def conv_depth(model):
    """Weighted layers on the longest path: convs not on the identity path, plus the classifier."""
    return sum(1 for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n) + 1


@pytest.mark.parametrize("name, depth, params", [
    # parameter counts of He et al. (2016), Table 6 (CIFAR-10): ResNet-20 0.27M, -56 0.85M, -110 1.7M
    ("small_resnet20", 20, 0.27e6), ("small_resnet56", 56, 0.85e6), ("small_resnet110", 110, 1.7e6),
])
def test_cifar_resnets_have_the_published_depth_and_size(name, depth, params):
    model = small_resnet(name, num_classes=10)
    assert conv_depth(model) == depth
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(params, rel=0.05)  # option B projections add a few thousand


def test_small_resnet18_is_resnet18_without_the_imagenet_stem():
    tv = pytest.importorskip("torchvision")
    ours = small_resnet("small_resnet18", num_classes=10)
    theirs = tv.models.resnet18(num_classes=10)
    ours_convs = [(n, m.weight.shape) for n, m in ours.named_modules() if isinstance(m, nn.Conv2d)]
    their_convs = [(n, m.weight.shape) for n, m in theirs.named_modules() if isinstance(m, nn.Conv2d)]
    assert ours_convs[1:] == their_convs[1:]  # same blocks, same names
    assert ours_convs[0] == ("conv1", (64, 3, 3, 3)) and their_convs[0] == ("conv1", (64, 3, 7, 7))


def test_shapes_features_and_head():
    model = small_resnet("small_resnet20", num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    feats = model.forward_features(x)
    assert feats.shape == (3, 64, 7, 7)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.mean((2, 3)))
    torch.testing.assert_close(model(x), model.fc(feats.mean((2, 3))))
    assert model.num_features == 64 and model.num_classes == 10


def test_paper_placement_on_small_resnets():
    model = create_model("small_resnet20", num_classes=10, in_chans=1)
    assert [r.name for r in envelopes(model)] == [
        "conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1", "layer3.0.downsample.0"]
    assert [r.channels for r in envelopes(model)] == [1, 16, 16, 32, 32]


def test_bad_names_and_sizes():
    with pytest.raises(ValueError, match="unknown small ResNet"):
        small_resnet("small_resnet21")
    with pytest.raises(ValueError, match="one positive entry per stage"):
        SmallResNet((1, 0), (8, 16))
    assert set(SMALL_RESNETS) >= {"small_resnet20", "small_resnet56", "small_resnet18"}


def test_norm_none_makes_each_sample_independent_of_the_batch():
    model = create_model("small_resnet20", num_classes=10, in_chans=1, model_kwargs={"norm": "none"}).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 1, 28, 28)
    whole = model(x)
    halves = torch.cat([model(x[:2]), model(x[2:])])
    torch.testing.assert_close(whole, halves, rtol=1e-5, atol=1e-6)
    batch = create_model("small_resnet20", num_classes=10, in_chans=1).train()
    assert not torch.allclose(batch(x)[:2], batch(x[:2]), atol=1e-4)  # BatchNorm couples the samples
    with pytest.raises(ValueError, match="norm must be one of"):
        small_resnet("small_resnet20", norm="layer")
