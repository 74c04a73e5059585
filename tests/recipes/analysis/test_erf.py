import math

import numpy as np
import pytest
import torch

from envconv import GaussianEnvelope, create_model
from envconv.kernels import raw_from_sigma
from envconv.recipes.analysis import effective_receptive_field, envelope_kernel2d, stage_names, tile_to_size


def test_erf_of_a_lone_envelope_is_its_kernel_at_the_centre():
    sigmas = [0.6, 1.5]
    env = GaussianEnvelope(2, 9).double()
    with torch.no_grad():
        env.raw_sigma.copy_(raw_from_sigma(torch.tensor(sigmas, dtype=torch.float64)))
    images = torch.rand(3, 2, 21, 21, dtype=torch.float64) + 0.1   # positive: the relu passes the centre
    erf = effective_receptive_field(env, images)
    expected = np.zeros((21, 21))
    expected[6:15, 6:15] = sum(envelope_kernel2d(s, 9) for s in sigmas)   # centre 10, 9 taps
    np.testing.assert_allclose(erf.map.numpy(), expected, rtol=1e-6, atol=1e-12)
    assert erf.map.shape == (21, 21) and erf.images == 3


def test_side_is_the_smallest_centred_square_holding_t():
    env = GaussianEnvelope.fixed(1, 1.0, 9).double()
    erf = effective_receptive_field(env, torch.ones(1, 1, 15, 15, dtype=torch.float64))
    # by hand, sigma = 1: the share of a centred (2h+1)^2 square is (sum_{|x|<=h} e^{-x^2/2} / Z)^2
    e = [math.exp(-x * x / 2) for x in range(5)]
    z = e[0] + 2 * sum(e[1:])
    share = [((e[0] + 2 * sum(e[1:h + 1])) / z) ** 2 for h in range(5)]   # 0.159, 0.780, 0.982, 0.9995, 1
    assert share[0] < 0.2 < share[1] and share[1] < 0.9 < share[2] < 0.99 < share[3]
    assert [erf.side(t) for t in (0.1, 0.2, 0.5, 0.9, 0.99)] == [1, 3, 3, 5, 7]
    with pytest.raises(ValueError, match="t must be"):
        erf.side(0)


def _positive_resnet(sigma):
    torch.manual_seed(0)
    model = create_model("small_resnet20", num_classes=10, in_chans=1, method="fixed", sigma=sigma)
    return model


def test_a_wider_fixed_envelope_widens_the_erf_of_a_resnet():
    # With non-negative conv weights, BatchNorm at its initial statistics (a positive scaling) and
    # positive images, every pre-activation is positive: the ReLUs pass everything and the ERF is
    # the composition of non-negative kernels. A sigma = 2 Gaussian before the strided convs is
    # one more non-negative blur in that composition, so the map can only spread out.
    narrow, wide = _positive_resnet(0.0), _positive_resnet(2.0)
    weights = {k: v.abs() for k, v in narrow.state_dict().items() if "envelope" not in k}
    for model in (narrow, wide):   # the same weights; only the fixed sigmas differ
        result = model.load_state_dict(weights, strict=False)
        assert not result.unexpected_keys and all("envelope" in k for k in result.missing_keys)
    images = torch.rand(4, 1, 64, 64) + 0.1
    sides = {name: effective_receptive_field(model, images, "layer3").side(0.99)
             for name, model in (("narrow", narrow), ("wide", wide))}
    assert sides["wide"] > sides["narrow"], sides


def test_stage_names_and_errors():
    model = create_model("small_resnet20", num_classes=10, in_chans=1)
    assert stage_names(model) == ["layer1", "layer2", "layer3"]
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        effective_receptive_field(model, torch.rand(1, 1, 28, 28), "layer9")
    with pytest.raises(ValueError, match=r"must be \(N, C, h, w\)"):
        effective_receptive_field(model, torch.rand(1, 1, 28, 28))       # logits have no centre
    with pytest.raises(ValueError, match="cannot find the stages"):
        stage_names(torch.nn.Conv2d(1, 1, 3))


def test_tiling_puts_the_image_in_the_centre():
    images = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    big = tile_to_size(images, 112)
    assert big.shape == (2, 1, 112, 112)
    torch.testing.assert_close(big[..., 42:70, 42:70], images)
    torch.testing.assert_close(big[..., 14:42, 42:70], images)   # the copy above


def test_border_mass_is_the_share_on_the_border_by_hand_and_zero_for_a_central_map():
    from envconv.recipes.analysis.erf import EffectiveReceptiveField as ERF

    centre = torch.zeros(9, 9, dtype=torch.float64)
    centre[4, 4] = 0.3  # all inside: exactly 0 (was 1 - inner / total, float noise like -6.7e-16)
    assert ERF(centre, None, 1).border_mass() == 0.0
    ramp = torch.arange(81, dtype=torch.float64).reshape(9, 9) / 7.0
    inner = ramp[2:-2, 2:-2].sum()
    assert ERF(ramp, None, 1).border_mass() == pytest.approx(float((ramp.sum() - inner) / ramp.sum()), rel=1e-12)
    assert ERF(torch.ones(4, 4, dtype=torch.float64), None, 1).border_mass() == 1.0  # too small for an inside
