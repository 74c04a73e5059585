"""The layers of envconv.conv in 1-D, 2-D and 3-D against plain convs on scipy-smoothed inputs, from_conv, export."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference as ref
from envconv import (
    DisentangledConv1d,
    DisentangledConv2d,
    DisentangledConv3d,
    EnvelopeConv1d,
    EnvelopeConv2d,
    EnvelopeConv3d,
    GaussianEnvelope,
    shrink,
)
from envconv.conv import tf_same_padding
from envconv.methods import build_replacement

CONFIGS = [
    # (kernel, stride, padding, dilation, groups, bias)
    (3, 1, 0, 1, 1, True),
    (3, 1, 1, 1, 1, False),
    (3, 2, 1, 1, 1, True),
    (1, 2, 0, 1, 1, False),
    (3, 2, 0, 1, 2, True),
    (3, 1, 1, 2, 1, False),
    (3, 2, 1, 2, 2, False),
    ((3, 1), 2, (1, 0), 1, 4, True),
]


def _random_layer(order, kernel, stride, padding, dilation, groups, bias, size=5):
    torch.manual_seed(0)
    conv = DisentangledConv2d(
        4, 8, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
        envelope_size=size, order=order, dtype=torch.float64,
    )
    with torch.no_grad():
        conv.envelope.raw_sigma.uniform_(-2, 3)
    return conv


@pytest.mark.parametrize("order", ["env-conv", "conv-env"])
@pytest.mark.parametrize("config", CONFIGS)
def test_layer_matches_reference(order, config):
    layer = _random_layer(order, *config)
    kernel, stride, padding, dilation, groups, bias = config
    x = torch.randn(2, 4, 13, 12, dtype=torch.float64)
    raw = layer.envelope.raw_sigma.detach().numpy()

    def conv(t):
        return F.conv2d(t, layer.weight, layer.bias, stride, padding, dilation, groups)

    if order == "env-conv":
        expected = conv(torch.from_numpy(ref.envelope(x.numpy(), raw, 5)))
    else:
        expected = torch.from_numpy(ref.envelope(conv(x).detach().numpy(), raw, 5))
    out = layer(x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), atol=1e-10)


def test_envelope_channels_follow_order():
    assert DisentangledConv2d(4, 8, 3).envelope.channels == 4
    assert DisentangledConv2d(4, 8, 3, order="conv-env").envelope.channels == 8
    assert DisentangledConv2d(4, 8, 3, shared_sigma=True).envelope.raw_sigma.shape == (1,)


def test_gradcheck_full_layer():
    for order in ("env-conv", "conv-env"):
        layer = _random_layer(order, 3, 2, 1, 1, 2, True, size=5)
        x = torch.randn(1, 4, 7, 7, dtype=torch.float64, requires_grad=True)
        raw = layer.envelope.raw_sigma
        assert torch.autograd.gradcheck(lambda inp, r, f=layer: f(inp), (x, raw))


def test_is_a_conv2d_with_its_state_dict_keys():
    layer = DisentangledConv2d(3, 5, 3, bias=True)
    assert isinstance(layer, nn.Conv2d)
    assert set(layer.state_dict()) == {"weight", "bias", "envelope.raw_sigma", "_extra_state", "envelope._extra_state"}
    plain = nn.Conv2d(3, 5, 3)
    # a plain Conv2d's state loads into the conv part (the envelope and the records missing only)
    missing, unexpected = layer.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["_extra_state", "envelope._extra_state", "envelope.raw_sigma"] and unexpected == []
    assert torch.equal(layer.weight, plain.weight)


def test_unbatched_input():
    layer = DisentangledConv2d(3, 4, 3, padding=1)
    x = torch.randn(3, 9, 9)
    torch.testing.assert_close(layer(x), layer(x[None])[0])


CONVS = [
    nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False),
    nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4),
    nn.Conv2d(8, 8, 3, padding="same", dilation=2, padding_mode="reflect"),
    nn.Conv2d(8, 16, 1, stride=2, bias=False),
]


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: repr(c))
@pytest.mark.parametrize("order", ["env-conv", "conv-env"])
def test_from_conv_equals_conv_when_sigma_is_zero(conv, order):
    new = DisentangledConv2d.from_conv(conv, order=order, sigma_init=-100.0)
    x = torch.randn(2, conv.in_channels, 16, 16)
    assert torch.equal(new(x), conv(x))
    assert new.padding_mode == conv.padding_mode and new.padding == conv.padding
    assert new.weight is conv.weight  # the same Parameter: a weight tied to another layer stays tied


def test_from_conv_keeps_dtype_requires_grad_and_mode():
    conv = nn.Conv2d(4, 6, 3, dtype=torch.float64).eval()
    conv.weight.requires_grad_(False)
    new = DisentangledConv2d.from_conv(conv, envelope_size=5, shared_sigma=True)
    assert new.weight.dtype == torch.float64 and new.envelope.raw_sigma.dtype == torch.float64
    assert not new.weight.requires_grad and new.bias.requires_grad
    assert not new.training
    assert new.envelope.size == 5 and new.envelope.shared
    with pytest.raises(TypeError, match="already converted"):
        DisentangledConv2d.from_conv(new)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        DisentangledConv2d.from_conv(nn.Linear(3, 3))


class _DynamicPadConv(nn.Conv2d):
    """Like timm's Conv2dSame: pads in forward, so its constructor arguments do not describe it."""

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 1)))


class _TaggedConv(nn.Conv2d):
    """A subclass that keeps Conv2d's computation."""


def test_from_conv_refuses_subclasses_that_change_forward():
    with pytest.raises(TypeError, match="overrides nn.Conv2d's forward"):
        DisentangledConv2d.from_conv(_DynamicPadConv(3, 4, 3))
    tagged = _TaggedConv(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(DisentangledConv2d.from_conv(tagged, sigma_init=-100.0)(x), tagged(x))
    lazy = nn.LazyConv2d(4, 3)
    with pytest.raises(ValueError, match="lazy"):
        DisentangledConv2d.from_conv(lazy)
    lazy(x)  # materialised: now an nn.Conv2d that converts
    assert torch.equal(DisentangledConv2d.from_conv(lazy, sigma_init=-100.0)(x), lazy(x))


def test_repr_shows_envelope_size_order_and_sigma_mode():
    text = repr(DisentangledConv2d(3, 8, 3, stride=2, envelope_size=9, order="conv-env", shared_sigma=True))
    assert "envelope_size=9" in text and "order=conv-env" in text and "sigma=shared" in text
    assert "stride=(2, 2)" in text


def test_shrink_changes_only_the_size():
    model = nn.Sequential(DisentangledConv2d(3, 8, 3), nn.ReLU(), DisentangledConv2d(8, 8, 3, order="conv-env"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert shrink(model, 3) is model
    assert [m.envelope_size for m in (model[0], model[2])] == [3, 3]
    after = model.state_dict()
    assert all(torch.equal(before[k], v) for k, v in after.items() if not k.endswith("envelope._extra_state"))
    # the records travel with the weights: [format 1, k_g, learnable, padding index, channels, spatial dims]
    assert after["0.envelope._extra_state"].tolist() == [1, 3, 1, 0, 3, 2]
    assert after["2.envelope._extra_state"].tolist() == [1, 3, 1, 0, 8, 2]
    # the shrunk layer is exactly the 3-tap envelope of the same sigma
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    layer = DisentangledConv2d(3, 4, 3, dtype=torch.float64, sigma_init=0.5)
    shrink(layer, 3)
    expected = F.conv2d(torch.from_numpy(ref.envelope(x.numpy(), [0.5] * 3, 3)), layer.weight, layer.bias)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected.detach().numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        shrink(model, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        DisentangledConv2d(3, 4, 3, order="before")
    with pytest.raises(ValueError, match="size"):
        DisentangledConv2d(3, 4, 3, envelope_size=6)
    with pytest.raises(ValueError, match="padding_mode"):
        DisentangledConv2d(3, 4, 3, envelope_padding_mode="same")
    with pytest.raises(ValueError, match="init"):
        DisentangledConv2d(3, 4, 3, sigma_init=float("nan"))
    layer = DisentangledConv2d(3, 4, 3)
    with pytest.raises(ValueError, match="in_channels=3 but the input has 5"):
        layer(torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="dims"):
        layer(torch.randn(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="in_channels=3 but the input has 5"):
        DisentangledConv2d(3, 4, 3, order="conv-env")(torch.randn(1, 5, 8, 8))


def _exportable_layer():
    layer = DisentangledConv2d(4, 6, 3, stride=2, padding=1).eval()
    with torch.no_grad():
        layer.envelope.raw_sigma.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    return layer


def test_torch_compile_matches_eager():
    layer = _exportable_layer()
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    compiled = torch.compile(layer)
    out = compiled(x)
    torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    grad_compiled = layer.envelope.raw_sigma.grad.clone()
    layer.zero_grad()
    layer(x).sum().backward()
    torch.testing.assert_close(grad_compiled, layer.envelope.raw_sigma.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dynamo):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    layer = _exportable_layer()
    x = torch.randn(2, 4, 16, 16)
    path = tmp_path / "layer.onnx"
    torch.onnx.export(layer, (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(y, layer(x).detach().numpy(), atol=1e-5)


def test_layer_under_bfloat16_autocast_close_to_float32():
    layer = _exportable_layer().train()
    x = torch.randn(2, 4, 16, 16)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=3e-2)
    out.float().square().sum().backward()
    assert torch.isfinite(layer.envelope.raw_sigma.grad).all() and layer.envelope.raw_sigma.grad.abs().sum() > 0


def test_state_dict_round_trip_and_channels_last_input():
    a = _random_layer("env-conv", 3, 2, 1, 1, 1, True)
    b = DisentangledConv2d(4, 8, 3, stride=2, padding=1, envelope_size=5, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    assert torch.equal(a(x), b(x))
    # channels_last input: same values (layout is an implementation detail, values are not)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a(x_cl), a(x), atol=1e-12, rtol=0)
    # and the output keeps the input's layout, as nn.Conv2d does
    assert a(x_cl).is_contiguous(memory_format=torch.channels_last) and a(x).is_contiguous()


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_stem_gradients_without_input_gradient_match_finite_differences(shared, channels_last):
    # A stem: 3 input channels, the image needs no gradient -> the forward-conv route of _stem_backward.
    torch.manual_seed(1)
    layer = DisentangledConv2d(3, 6, 7, stride=2, padding=3, bias=True, envelope_size=5, shared_sigma=shared,
                               dtype=torch.float64)
    with torch.no_grad():
        layer.envelope.raw_sigma.uniform_(-1, 2)
    x = torch.randn(2, 3, 15, 14, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(layer(x))
    (layer(x) * g).sum().backward()

    def loss(raw):
        smoothed = torch.from_numpy(ref.envelope(x.numpy(), raw, 5))
        with torch.no_grad():
            return float((F.conv2d(smoothed, layer.weight, layer.bias, 2, 3) * g).sum())

    raw = layer.envelope.raw_sigma.detach().numpy()
    eps = 1e-6
    numeric = [(loss(raw + eps * e) - loss(raw - eps * e)) / (2 * eps) for e in np.eye(len(raw))]
    np.testing.assert_allclose(layer.envelope.raw_sigma.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)
    smoothed = torch.from_numpy(ref.envelope(x.numpy(), raw, 5))
    weight = layer.weight.detach().requires_grad_()
    bias = layer.bias.detach().requires_grad_()
    (F.conv2d(smoothed, weight, bias, 2, 3) * g).sum().backward()
    torch.testing.assert_close(layer.weight.grad, weight.grad)
    torch.testing.assert_close(layer.bias.grad, bias.grad)


@pytest.mark.parametrize("layer_cl, input_cl", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("shape", [(32, 64, 1, 2, 0, True), (3, 8, 7, 2, 3, False), (16, 16, 3, 2, 1, True)])
def test_weight_gradient_has_the_weights_layout(layer_cl, input_cl, shape):
    # DistributedDataParallel's gradient buckets expect each gradient in its parameter's strides; a
    # channels_last input to NCHW weights makes oneDNN return a (32, 1, 32, 32)-strided 1x1 weight gradient.
    cin, cout, k, stride, padding, x_grad = shape
    layer = DisentangledConv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
    x = torch.randn(2, cin, 14, 14)
    if layer_cl:
        layer = layer.to(memory_format=torch.channels_last)
    if input_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    layer(x.requires_grad_(x_grad)).sum().backward()
    assert layer.weight.grad.stride() == layer.weight.stride()


# TF-"same" convolutions of timm and efficientnet-pytorch / smp: converted with their asymmetric padding


def _tf_same_convs():
    convs = []
    timm_layers = pytest.importorskip("timm.layers", reason="timm is not installed")
    convs.append(timm_layers.Conv2dSame(4, 6, 3, stride=2, bias=True))
    try:
        from efficientnet_pytorch.utils import Conv2dDynamicSamePadding, Conv2dStaticSamePadding
    except ImportError:
        pass
    else:
        convs += [Conv2dStaticSamePadding(4, 6, 3, stride=2, image_size=16, bias=False),
                  Conv2dDynamicSamePadding(4, 6, 5, stride=2, bias=False)]
    return convs


@pytest.mark.parametrize("order", ["env-conv", "conv-env"])
def test_tf_same_convs_keep_their_asymmetric_padding_behind_the_envelope(order):
    timm_padding = pytest.importorskip("timm.layers.padding", reason="timm is not installed")
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)  # even: TF-"same" pads 0 left / top, 1 right / bottom
    for conv in _tf_same_convs():
        conv = conv.double()
        layer = DisentangledConv2d.from_conv(conv, order=order)
        with torch.no_grad():
            layer.envelope.raw_sigma.fill_(-100.0)  # sigma -> 0: exactly the TF-"same" convolution
        assert torch.equal(layer(x), conv(x)), type(conv).__name__
        with torch.no_grad():
            layer.envelope.raw_sigma.copy_(torch.linspace(-1, 1, layer.envelope.channels))
        raw, k = layer.envelope.raw_sigma.detach(), layer.kernel_size
        if order == "env-conv":  # the envelope (zero padded, size kept), then timm's pad_same, then the conv
            padded = timm_padding.pad_same(torch.from_numpy(ref.envelope(x, raw, 9)), k, layer.stride, layer.dilation)
            expected = F.conv2d(padded, conv.weight, conv.bias, layer.stride, 0, layer.dilation)
        else:
            expected = torch.from_numpy(ref.envelope(conv(x).detach(), raw, 9))
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
        assert layer(x).shape[-2:] == (8, 8)
        gradcheck_input = x[:1, :, :7, :6].clone().requires_grad_()  # odd and even sizes
        assert torch.autograd.gradcheck(layer, (gradcheck_input,))


def test_tf_same_under_fixed_sigma_and_the_other_methods():
    conv = _tf_same_convs()[0]
    x = torch.randn(1, 4, 10, 12)
    fixed = build_replacement("fixed", conv, sigma=0.0)
    assert fixed.tf_same == [] and torch.equal(fixed(x), conv(x))
    dw = build_replacement("dw", conv)
    with torch.no_grad():  # delta filters: the depth-wise envelope is the identity
        for w in (dw.envelope.weight_x, dw.envelope.weight_y):
            w.zero_().view(w.shape[0], -1)[:, w[0].numel() // 2] = 1
    assert dw.tf_same == [] and torch.equal(dw(x), conv(x))
    with pytest.raises(TypeError, match="pads like TensorFlow's 'same'"):
        build_replacement("proj", conv)


def test_tf_same_padding_of_static_and_dynamic_classes():
    convs = _tf_same_convs()
    assert [tf_same_padding(c) for c in convs][:1] == [[]]
    if len(convs) == 3:
        assert tf_same_padding(convs[1]) == [0, 1, 0, 1] and tf_same_padding(convs[2]) == []
    assert tf_same_padding(nn.Conv2d(3, 3, 3)) is None and tf_same_padding(_DynamicPadConv(3, 4, 3)) is None
    for conv in convs:  # at sigma -> 0 the envelope is the identity: the layer pads as the convolution did
        layer = DisentangledConv2d.from_conv(conv)
        with torch.no_grad():
            layer.envelope.raw_sigma.fill_(-1e4)
        x = torch.randn(1, 4, 11, 16)
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_disentangled_conv2d_with_a_sigma_per_axis_equals_its_envelope_then_the_conv():
    from envconv import functional

    torch.manual_seed(0)
    conv = DisentangledConv2d(3, 4, 3, stride=2, padding=1, envelope_size=5, sigma_per_axis=True).double()
    with torch.no_grad():
        conv.envelope.raw_sigma.copy_(torch.tensor([[-1.0, 0.5], [0.3, 1.2], [2.0, -0.4]]))
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64, requires_grad=True)
    smoothed = torch.from_numpy(ref.envelope(x.detach(), conv.envelope.raw_sigma.detach(), 5))
    want = F.conv2d(smoothed, conv.weight.detach(), conv.bias.detach(), 2, 1)
    torch.testing.assert_close(conv(x), want, rtol=1e-12, atol=1e-12)
    assert "per-channel per-axis" in repr(conv)
    weight, bias = conv.weight.detach(), conv.bias.detach()
    assert torch.autograd.gradcheck(lambda a, r: functional.envelope_conv2d(a, r, 5, weight, bias, stride=2, padding=1),
                                    (x, conv.envelope.raw_sigma))
    conv(x).square().sum().backward()
    assert conv.envelope.raw_sigma.grad.shape == (3, 2)


# ---- 1-D and 3-D layers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer, conv, shape", [
    (DisentangledConv1d, F.conv1d, (2, 3, 17)),
    (DisentangledConv3d, F.conv3d, (2, 3, 5, 9, 8)),
])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0)])
def test_layers_equal_scipy_envelope_then_the_convolution(layer, conv, shape, kernel, stride, padding):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    m = layer(3, 4, kernel, stride=stride, padding=padding, envelope_size=5, dtype=torch.float64)
    with torch.no_grad():
        m.envelope.raw_sigma.copy_(torch.tensor([-0.5, 0.3, 1.2]))
    dims = len(shape) - 2
    smoothed = torch.from_numpy(ref.envelope(x, m.envelope.raw_sigma.detach(), 5, "zeros", [1] * dims))
    want = conv(smoothed, m.weight, m.bias, stride, padding)
    torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-12)  # the 1x1 strided case reads it sampled
    torch.testing.assert_close(m(x[0]), want[0], rtol=1e-12, atol=1e-12)  # unbatched
    after = layer(3, 4, kernel, stride=stride, padding=padding, envelope_size=5, order="conv-env", dtype=torch.float64)
    raw = after.envelope.raw_sigma.detach()
    convolved = conv(x, after.weight, after.bias, stride, padding).detach()
    want = torch.from_numpy(ref.envelope(convolved, raw, 5, "zeros", [1] * dims))
    torch.testing.assert_close(after(x), want, rtol=1e-12, atol=1e-12)


def test_gradients_of_a_3d_layer_against_finite_differences():
    m = DisentangledConv3d(2, 3, 3, stride=2, padding=1, envelope_size=3, sigma_init=0.4, dtype=torch.float64)
    x = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    params = (x, m.envelope.raw_sigma, m.weight)
    assert torch.autograd.gradcheck(lambda a, r, w: torch.func.functional_call(
        m, {"envelope.raw_sigma": r, "weight": w, "bias": m.bias}, (a,)), params)


def test_from_conv_shares_weights_and_refuses_other_dimensionalities():
    conv = nn.Conv3d(3, 8, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3)).eval()
    layer = DisentangledConv3d.from_conv(conv, envelope_size=5)
    assert layer.weight is conv.weight and layer.bias is conv.bias and not layer.training
    assert layer.envelope.spatial_dims == 3 and layer.envelope.channels == 3
    with pytest.raises(TypeError, match="replaces an nn.Conv3d, got Conv2d"):
        DisentangledConv3d.from_conv(nn.Conv2d(3, 8, 3))
    with pytest.raises(TypeError, match="DisentangledConv2d replaces an nn.Conv2d, got Conv3d"):
        DisentangledConv2d.from_conv(conv)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\) or \(C, D, H, W\), got 3 dims"):
        layer(torch.randn(3, 8, 8))
    state = layer.state_dict()
    assert state["envelope._extra_state"].tolist() == [1, 5, 1, 0, 3, 3] and state["_extra_state"].tolist() == [1, 0]


def test_envelope_conv3d_takes_any_envelope_module():
    env = GaussianEnvelope.fixed(2, sigma=[0.0, 0.5], size=3, spatial_dims=3)
    layer = EnvelopeConv3d(2, 3, 1, envelope=env)
    assert "order=env-conv" in repr(layer)
    with pytest.raises(ValueError, match="order must be one of"):
        EnvelopeConv3d(2, 3, 1, envelope=env, order="bad")


@pytest.mark.parametrize("layer, dims", [(EnvelopeConv1d, 1), (EnvelopeConv3d, 3),
                                         (EnvelopeConv2d, 2)])
def test_a_layer_refuses_an_envelope_of_another_dimensionality(layer, dims):
    # a 2-D envelope in a 1-D layer read an (N, C, L) batch as one unbatched image and blurred across channels
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](4, 4, 3)
    other = 2 if dims != 2 else 3
    with pytest.raises(ValueError, match=f"filters {dims}-D maps but its envelope is {other}-D; build the envelope "
                                         f"with spatial_dims={dims}"):
        layer.from_conv(conv, envelope=GaussianEnvelope.fixed(4, sigma=1.0, size=5, spatial_dims=other))
    fitting = layer.from_conv(conv, envelope=GaussianEnvelope.fixed(4, sigma=1.0, size=5, spatial_dims=dims))
    assert fitting.envelope.spatial_dims == dims
