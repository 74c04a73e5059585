"""envconv.envelopes: the per-layer sigma table."""

import math

import pytest
import torch
from torch import nn

from envconv import DisentangledConv2d, GaussianEnvelope, envelopes


def test_envelopes_lists_layers_with_sigma_statistics():
    model = nn.Sequential()
    model.add_module("stem", DisentangledConv2d(3, 8, 3, envelope_size=9))
    body = nn.Sequential(nn.ReLU(), DisentangledConv2d(8, 16, 3, order="conv-env", shared_sigma=True))
    model.add_module("body", body)
    model.add_module("blur", GaussianEnvelope.fixed(16, sigma=0.7, size=5))
    with torch.no_grad():
        model.stem.envelope.raw_sigma.copy_(torch.tensor([-1.0, 0.0, 2.0]))
        model.body[1].envelope.raw_sigma.fill_(1.0)
    rows = envelopes(model)
    assert [r.name for r in rows] == ["stem", "body.1", "blur"]
    sig = [math.sqrt(math.log1p(math.exp(v))) for v in (-1.0, 0.0, 2.0)]
    stem = rows[0]
    assert (stem.channels, stem.size, stem.shared, stem.learnable) == (3, 9, False, True)
    assert stem.sigma_mean == pytest.approx(sum(sig) / 3, rel=1e-6)
    assert stem.sigma_min == pytest.approx(sig[0], rel=1e-6)
    assert stem.sigma_max == pytest.approx(sig[2], rel=1e-6)
    body = rows[1]
    assert (body.channels, body.shared) == (16, True)
    assert body.sigma_min == body.sigma_max == pytest.approx(math.sqrt(math.log1p(math.e)), rel=1e-6)
    blur = rows[2]
    assert (blur.size, blur.learnable) == (5, False)
    assert blur.sigma_mean == pytest.approx(0.7, rel=1e-6)
    assert rows[0].as_dict()["name"] == "stem"


def test_envelopes_of_a_plain_model_is_empty():
    assert envelopes(nn.Sequential(nn.Conv2d(3, 3, 3))) == []


def test_layer_name_strips_the_envelope_attribute():
    from envconv.convert import layer_name

    assert layer_name("layer2.0.conv2.envelope") == "layer2.0.conv2"
    assert layer_name("envelope") == "(root)"
    assert layer_name("") == "(root)"
    assert layer_name("blur") == "blur"
    # a root DisentangledConv2d reports its envelope under "(root)"
    assert [r.name for r in envelopes(DisentangledConv2d(3, 4, 3))] == ["(root)"]
