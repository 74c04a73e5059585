"""The method registry: options, parameter counts, gradients (finite differences) and errors."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from envconv.methods import (
    CBS_DEFAULTS,
    METHODS,
    build_replacement,
    cbs_sigma,
    method_options,
    set_curriculum_epoch,
)

OPTIONS = {"fixed": {"sigma": 0.5}}
C, D, K = 4, 6, 5
#: extra parameters of each method on a C -> D convolution with k_g = K (the module docstring's table)
EXTRA = {"gaussian": C, "fixed": 0, "none": 0, "dw": 2 * K * C, "proj": D, "se": C, "param-attention": K * K * C,
         "adaptive-attention": 2 * C, "multiplicative": C, "ensemble": 2 * 5 * C, "cbs": 0}


def conv3x3(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Conv2d(C, D, 3, stride=2, padding=1, dtype=dtype)


def size_option(name):
    return {} if name in ("none", "multiplicative") else {"envelope_size": K}


def new_parameters(module):
    return {n: p for n, p in module.named_parameters() if n not in ("weight", "bias")}


def test_every_method_is_listed_with_its_extra_parameters():
    from envconv.recipes.peers import REGISTERED  # the recipes register the peers too (tests/recipes/test_peers.py)

    assert set(METHODS) - set(REGISTERED) == set(EXTRA)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_parameter_count(name):
    conv = conv3x3()
    before = sum(p.numel() for p in conv.parameters())
    new = build_replacement(name, conv, **OPTIONS.get(name, {}), **size_option(name))
    assert sum(p.numel() for p in new.parameters()) - before == EXTRA[name]
    if name != "none":
        torch.testing.assert_close(new.weight, conv.weight)


def test_shared_sigma_adds_one_parameter():
    new = build_replacement("gaussian", conv3x3(), shared_sigma=True)
    assert [p.numel() for p in new_parameters(new).values()] == [1]


@pytest.mark.parametrize("name", sorted(set(EXTRA) - {"none", "fixed", "cbs"}))
def test_gradients_match_finite_differences(name):
    conv = conv3x3(torch.float64)
    new = build_replacement(name, conv, **OPTIONS.get(name, {}), **({} if name == "multiplicative" else
                                                                   {"envelope_size": 3}))
    with torch.no_grad():
        for p in new_parameters(new).values():
            p.add_(0.3 * torch.randn_like(p))
    params = new_parameters(new)
    x = torch.randn(2, C, 5, 5, dtype=torch.float64)

    def f(*values):
        return functional_call(new, dict(zip(params, values)), (x,))

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in params.values()))
    # and a loss reaches every new parameter (eq. (14)'s w_c cancels in the softmax: exactly 0)
    new.zero_grad()
    (new(x) * torch.randn(new(x).shape, dtype=torch.float64)).sum().backward()
    for n, p in params.items():
        if n == "envelope.w_center":
            assert float(p.grad.abs().max()) < 1e-10
        else:
            assert float(p.grad.abs().max()) > 1e-6, n


def test_multiplicative_window_is_constant_on_1x1_convolutions():
    conv = nn.Conv2d(C, D, 1, stride=2)
    new = build_replacement("multiplicative", conv)
    x = torch.randn(1, C, 6, 6)
    torch.testing.assert_close(new(x), conv(x))


def test_option_errors_name_the_method_and_the_options():
    with pytest.raises(ValueError, match="unknown method 'blur'"):
        build_replacement("blur", conv3x3())
    with pytest.raises(ValueError, match=r"'proj' does not take option\(s\) \['order'\]"):
        build_replacement("proj", conv3x3(), order="conv-env")
    with pytest.raises(ValueError, match=r"'fixed' needs option\(s\) \['sigma'\]"):
        build_replacement("fixed", conv3x3())
    assert method_options("fixed") == (["sigma"], ["envelope_size", "order", "envelope_padding_mode", "sigma_per_axis"])
    with pytest.raises(ValueError, match="centred"):
        build_replacement("se", nn.Conv2d(C, D, 3, padding=0))
    with pytest.raises(ValueError, match="decay"):
        build_replacement("cbs", conv3x3(), decay=1.5)
    with pytest.raises(TypeError, match="already converted"):
        build_replacement("dw", build_replacement("gaussian", conv3x3()))


def test_cbs_schedule_defaults_and_resume():
    assert CBS_DEFAULTS == {"initial_sigma": 1.0, "decay": 0.9, "every": 5, "size": 3}
    assert cbs_sigma(14) == pytest.approx(0.81) and cbs_sigma(15) == pytest.approx(0.729)
    model = nn.Sequential(build_replacement("cbs", conv3x3()), nn.ReLU(), build_replacement("cbs", nn.Conv2d(D, D, 3)))
    assert model[0].envelope.size == 3 and model[0].order == "conv-env"
    assert set_curriculum_epoch(model, 10) == 2
    assert float(model[2].envelope.sigma[0]) == pytest.approx(0.81, rel=1e-6)
    state = model.state_dict()
    fresh = nn.Sequential(build_replacement("cbs", conv3x3()), nn.ReLU(), build_replacement("cbs", nn.Conv2d(D, D, 3)))
    assert float(fresh[0].envelope.sigma[0]) == pytest.approx(1.0, rel=1e-6)
    fresh.load_state_dict(state)  # the current sigma is a buffer: a resumed run continues the schedule
    assert float(fresh[0].envelope.sigma[0]) == pytest.approx(0.81, rel=1e-6)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "envelope" in n)
    assert math.isclose(cbs_sigma(7, initial_sigma=2.0, decay=0.5, every=3), 0.5)


@pytest.mark.parametrize("name", ["dw", "param-attention", "adaptive-attention", "ensemble"])
def test_envelope_methods_after_the_convolution_act_on_output_channels(name):
    conv = conv3x3(torch.float64)
    new = build_replacement(name, conv, envelope_size=3, order="conv-env").train()
    x = torch.randn(2, C, 6, 6, dtype=torch.float64)
    assert new.envelope.channels == D
    torch.testing.assert_close(new(x), new.envelope(conv(x)))


def test_a_registered_method_is_usable_by_name():
    from envconv.methods import register_method

    def double(conv, *, factor: float = 2.0):
        return nn.Sequential(conv, nn.Identity()) if factor == 2.0 else conv

    try:
        register_method("wrap-test", double, "test", "wraps the conv")
        assert method_options("wrap-test") == ([], ["factor"])
        assert isinstance(build_replacement("wrap-test", conv3x3()), nn.Sequential)
        with pytest.raises(ValueError, match="already registered"):
            register_method("wrap-test", double)
    finally:
        METHODS.pop("wrap-test", None)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("in_chans", [1, 3])
def test_an_empty_batch_goes_forward_and_backward_through_every_method(name, in_chans):
    from envconv import create_model

    model = create_model("small_resnet20", num_classes=10, in_chans=in_chans, method=name,
                         **({"sigma": 0.5} if name == "fixed" else {}))
    x = torch.randn(0, in_chans, 28, 28, requires_grad=in_chans == 3)  # 1 channel: the stem's no-input-grad route
    out = model(x)
    assert out.shape == (0, 10)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
