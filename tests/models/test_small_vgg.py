"""The small VGG-style net: its layout, the factory name and its pool placement."""

import copy

import pytest
import torch
from torch import nn

from envconv import EnvelopePool2d, create_model, disentangle, envelopes, list_models
from envconv.models import SmallVGG, small_vgg


def test_small_vgg8_layout_and_a_hand_counted_size():
    net = small_vgg("small_vgg8", num_classes=10, in_chans=1)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128),
                                                                (128, 128)]
    # 3x3 weights + BN (2 per channel) + the classifier, counted by hand
    weights = 9 * (32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128)
    assert sum(p.numel() for p in net.parameters()) == weights + 2 * (2 * 32 + 2 * 64 + 2 * 128) + 128 * 10 + 10
    x = torch.randn(2, 1, 28, 28)
    assert net.forward_features(x).shape == (2, 128, 7, 7)
    assert net(x).shape == (2, 10)
    assert "small_vgg8" in list_models()
    with pytest.raises(ValueError, match="unknown small VGG"):
        small_vgg("small_vgg99")
    with pytest.raises(ValueError, match="one length"):
        SmallVGG((2,), (8, 16))


def test_pools_placement_on_the_small_vgg_equals_the_plain_net_at_sigma_zero():
    torch.manual_seed(0)
    plain = create_model("small_vgg8", num_classes=10, in_chans=1, method="none").eval()
    x = torch.randn(3, 1, 28, 28)
    fixed = disentangle(copy.deepcopy(plain), where="pools", method="fixed", sigma=0.0)
    assert torch.equal(fixed(x), plain(x))
    ours = create_model("small_vgg8", num_classes=10, in_chans=1, where="pools")
    assert [(e.name, e.channels) for e in envelopes(ours)] == [("features.conv1_1", 1), ("features.pool1", 32),
                                                                ("features.pool2", 64)]
    assert isinstance(ours.features.pool1, EnvelopePool2d)
