"""envconv.envelopes: every envelope of a model or a state dict, its path and its sigmas."""

import math

import pytest
import torch
from torch import nn

from envconv import DisentangledConv2d, GaussianEnvelope, create_model, envelopes


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
    # the state dict's records give the same rows: shared sigma over 16 channels, a fixed 5-tap blur
    assert envelopes(model.state_dict()) == rows


def test_envelopes_of_a_plain_model_is_empty():
    assert envelopes(nn.Sequential(nn.Conv2d(3, 3, 3))) == []


def test_layer_name_strips_the_envelope_attribute():
    from envconv.listing import layer_name

    assert layer_name("layer2.0.conv2.envelope") == "layer2.0.conv2"
    assert layer_name("envelope") == "(root)"
    assert layer_name("") == "(root)"
    assert layer_name("blur") == "blur"
    # a root DisentangledConv2d reports its envelope under "(root)"
    assert [r.name for r in envelopes(DisentangledConv2d(3, 4, 3))] == ["(root)"]


def test_paths_of_a_converted_resnet_and_the_same_rows_from_its_state_dict():
    model = create_model("small_resnet20", num_classes=10, in_chans=1, method="gaussian")
    with torch.no_grad():
        model.layer2[0].conv1.envelope.raw_sigma.copy_(torch.linspace(-2, 2, 16))
    rows = envelopes(model)
    assert [(r.name, r.path) for r in rows] == [
        ("conv1", "stem"), ("layer2.0.conv1", "residual"), ("layer2.0.downsample.0", "identity"),
        ("layer3.0.conv1", "residual"), ("layer3.0.downsample.0", "identity")]
    expected = [math.sqrt(math.log1p(math.exp(v))) for v in torch.linspace(-2, 2, 16).tolist()]
    assert rows[1].sigmas == pytest.approx(expected, rel=1e-6) and rows[1].size == 9
    assert rows[1].as_dict(with_sigmas=True)["sigmas"] == list(rows[1].sigmas)
    from_state = envelopes(model.state_dict())
    assert [(r.name, r.path, r.channels, r.sigmas) for r in from_state] == [
        (r.name, r.path, r.channels, r.sigmas) for r in rows]
    assert [(r.size, r.shared, r.learnable) for r in from_state] == [(r.size, r.shared, r.learnable) for r in rows]
    # a state dict without the records cannot say the sizes: refused, naming the record
    stripped = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(ValueError, match="has conv1.envelope.raw_sigma but not its record conv1.envelope._extra_state"):
        envelopes(stripped)


def test_envelopes_refuses_other_objects():
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        envelopes([1, 2])


def test_pool_envelopes_are_on_the_pool_path_from_a_model_and_from_its_state_dict():
    from envconv import EnvelopePool2d, disentangle
    from envconv.models import create_model

    model = disentangle(create_model("small_vgg8", num_classes=10, in_chans=1, method="none"), where="pools",
                        input_size=(32, 32))
    rows = envelopes(model)
    assert [(r.path, isinstance(model.get_submodule(r.name), EnvelopePool2d)) for r in rows] == \
        [("stem", False)] + [("pool", True)] * (len(rows) - 1) and len(rows) == 3
    assert envelopes(model.state_dict()) == rows


def test_a_network_without_shortcut_convolutions_has_a_main_path_not_a_residual_one():
    from envconv import disentangle

    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.Conv2d(16, 16, 3, stride=2))
    model = disentangle(plain)
    expected = [("0", "stem"), ("2", "main"), ("3", "main")]
    assert [(r.name, r.path) for r in envelopes(model)] == expected
    assert [(r.name, r.path) for r in envelopes(model.state_dict())] == expected
