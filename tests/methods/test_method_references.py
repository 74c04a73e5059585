"""Every comparison method against a slow direct reference written from its equation (float64)."""

import numpy as np
import pytest
import torch
from torch import nn

import method_reference as mref
import reference as ref
from envconv.methods import build_replacement

CONVS = {
    "3x3/2": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=True),
    "3x3 grouped": dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=1, groups=2, bias=False),
    "1x1/2": dict(in_channels=4, out_channels=6, kernel_size=1, stride=2, padding=0, bias=False),
    "5x5 dilated": dict(in_channels=4, out_channels=6, kernel_size=5, stride=1, padding=4, dilation=2, bias=True),
}


def make(name, **options):
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONVS[name], dtype=torch.float64)
    new = build_replacement(options.pop("method"), conv, **options)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    return conv, new, x


def numpy_conv(conv):
    return dict(w=conv.weight.detach().numpy(), b=None if conv.bias is None else conv.bias.detach().numpy(),
                conv_kw=dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups))


def randomise(module, *names, scale=1.0):
    with torch.no_grad():
        for n in names:
            p = module.get_parameter(n)
            p.copy_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("conv_name", ["3x3/2", "1x1/2", "5x5 dilated"])
def test_proj_eq15(conv_name):
    conv, new, x = make(conv_name, method="proj", envelope_size=5)
    randomise(new, "proj_weight")
    c = numpy_conv(conv)
    want = mref.proj(x.numpy(), c["w"], c["b"], new.proj_weight.detach().numpy(), c["conv_kw"], 5)
    np.testing.assert_allclose(new(x).detach().numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("conv_name", list(CONVS))
def test_local_se_eq16(conv_name):
    conv, new, x = make(conv_name, method="se", envelope_size=3)
    randomise(new, "se_alpha", scale=2.0)
    c = numpy_conv(conv)
    want = mref.local_se(x.numpy(), c["w"], c["b"], new.se_alpha.detach().numpy(), c["conv_kw"], 3)
    np.testing.assert_allclose(new(x).detach().numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("conv_name", ["3x3/2", "3x3 grouped", "5x5 dilated"])
def test_multiplicative_eq10(conv_name):
    conv, new, x = make(conv_name, method="multiplicative")
    randomise(new, "raw_sigma")
    c = numpy_conv(conv)
    want = mref.multiplicative(x.numpy(), c["w"], c["b"], new.raw_sigma.detach().numpy(), c["conv_kw"])
    np.testing.assert_allclose(new(x).detach().numpy(), want, rtol=1e-10, atol=1e-12)


def test_multiplicative_window_limits():
    conv, new, x = make("3x3/2", method="multiplicative")
    with torch.no_grad():
        new.raw_sigma.fill_(1e4)  # sigma^2 = 1e4: window within 1e-4 of 1 -> nearly the plain conv
    assert torch.allclose(new(x), conv(x), rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        new.raw_sigma.fill_(-80.0)  # sigma -> 0: only the centre tap survives
    centre = nn.Conv2d(**CONVS["3x3/2"], dtype=torch.float64)
    with torch.no_grad():
        centre.weight.zero_()
        centre.weight[:, :, 1, 1] = conv.weight[:, :, 1, 1]
        centre.bias.copy_(conv.bias)
    torch.testing.assert_close(new(x), centre(x))


@pytest.mark.parametrize("conv_name", ["3x3/2", "1x1/2"])
def test_dw_separable_filters(conv_name):
    conv, new, x = make(conv_name, method="dw", envelope_size=5)
    env = new.envelope
    # at init: exactly the Gaussian envelope at raw sigma 0
    np.testing.assert_allclose(env(x).detach().numpy(), ref.envelope(x.numpy(), np.zeros(4), 5), rtol=1e-10, atol=1e-12)
    randomise(env, "weight_x", "weight_y")
    want = mref.separable(x.numpy(), env.weight_x.detach().numpy(), env.weight_y.detach().numpy())
    np.testing.assert_allclose(env(x).detach().numpy(), want, rtol=1e-10, atol=1e-12)
    c = numpy_conv(conv)
    np.testing.assert_allclose(new(x).detach().numpy(), mref.conv2d(want, c["w"], c["b"], **c["conv_kw"]),
                               rtol=1e-10, atol=1e-12)


def test_param_attention_eq12():
    conv, new, x = make("3x3/2", method="param-attention", envelope_size=5)
    env = new.envelope
    np.testing.assert_allclose(env(x).detach().numpy(), ref.envelope(x.numpy(), np.zeros(4), 5), rtol=1e-10, atol=1e-12)
    randomise(env, "logits")
    want = mref.param_attention(x.numpy(), env.logits.detach().numpy())
    np.testing.assert_allclose(env(x).detach().numpy(), want, rtol=1e-10, atol=1e-12)
    maps = env.kernel2d().detach()
    assert bool((maps >= 0).all()) and torch.allclose(maps.sum((1, 2)), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("size", [3, 5])
def test_adaptive_attention_eq13_14(size):
    conv, new, x = make("3x3/2", method="adaptive-attention", envelope_size=size)
    env = new.envelope
    randomise(env, "w_center", "w_neighbor")
    want = mref.adaptive_attention(x.numpy(), env.w_center.detach().numpy(), env.w_neighbor.detach().numpy(), size)
    np.testing.assert_allclose(env(x).detach().numpy(), want, rtol=1e-10, atol=1e-12)


def test_adaptive_attention_starts_as_a_box_filter_inside():
    _, new, x = make("3x3/2", method="adaptive-attention", envelope_size=3)
    box = torch.nn.functional.avg_pool2d(x, 3, stride=1)  # interior: the plain 3x3 mean
    torch.testing.assert_close(new.envelope(x)[..., 1:-1, 1:-1], box)


def test_ensemble_eq11_batchnorm_training_mode():
    conv, new, x = make("3x3/2", method="ensemble", envelope_size=7, scales=(0.0, 0.7, 1.5))
    env = new.envelope
    randomise(env, "bn.weight", "bn.bias")
    want = mref.ensemble(x.numpy(), (0.0, 0.7, 1.5), 7, env.bn.weight.detach().numpy(), env.bn.bias.detach().numpy())
    np.testing.assert_allclose(env(x).detach().numpy(), want, rtol=1e-9, atol=1e-10)


def test_fixed_and_cbs_are_gaussians_before_and_after():
    conv, new, x = make("3x3/2", method="fixed", sigma=0.6, envelope_size=5)
    c = numpy_conv(conv)
    k = np.repeat(mref.gaussian1d(0.6, 5)[None], 4, axis=0)
    want = mref.conv2d(mref.separable(x.numpy(), k, k), c["w"], c["b"], **c["conv_kw"])
    np.testing.assert_allclose(new(x).detach().numpy(), want, rtol=1e-10, atol=1e-12)

    conv, new, x = make("3x3/2", method="cbs", initial_sigma=2.0, decay=0.5, every=2)
    new.envelope.set_epoch(5)  # 2 * 0.5 ** (5 // 2) = 0.5
    y = mref.conv2d(x.numpy(), c["w"], c["b"], **c["conv_kw"])
    k = np.repeat(mref.gaussian1d(0.5, 3)[None], 6, axis=0)
    np.testing.assert_allclose(new(x).detach().numpy(), mref.separable(y, k, k), rtol=1e-10, atol=1e-12)
