"""Conv-BN fusion (torch.ao.quantization.fuse_modules) and PT2E quantization of converted models."""

import pytest
import torch
import torchvision
from torch import nn

import envconv
from envconv import DisentangledConv2d
from envconv.integrations.quantization import FUSER_METHODS, fuse_modules, separate_envelopes


def _resnet18_with_statistics():
    torch.manual_seed(0)
    model = envconv.disentangle(torchvision.models.resnet18(num_classes=10)).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # running statistics far from the identity, so folding matters
                m.running_mean.normal_(generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.normal_(generator=gen)
                m.bias.normal_(generator=gen)
            elif isinstance(m, envconv.GaussianEnvelope):
                m.raw_sigma.normal_(generator=gen)
    return model.eval()


def test_fuse_modules_folds_batch_norms_into_converted_and_plain_convolutions():
    model = _resnet18_with_statistics()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
    groups = [["conv1", "bn1", "relu"], ["layer1.0.conv1", "layer1.0.bn1"], ["layer2.0.conv1", "layer2.0.bn1"],
              ["layer2.0.downsample.0", "layer2.0.downsample.1"]]
    fused = fuse_modules(model, groups)
    assert isinstance(fused.conv1[0], DisentangledConv2d) and isinstance(fused.bn1, nn.Identity)
    shortcut = fused.layer2[0].downsample[0]
    assert isinstance(shortcut, DisentangledConv2d) and shortcut.bias is not None
    assert type(fused.layer1[0].conv1).__name__ == "Conv2d"  # torch's own fuser for the plain pair
    assert len(envconv.envelopes(fused)) == 7
    with torch.no_grad():
        torch.testing.assert_close(fused(x), want, rtol=1e-10, atol=1e-10)
    assert isinstance(model.bn1, nn.BatchNorm2d)  # inplace=False: the model itself is unchanged


@pytest.mark.parametrize("dims", [1, 3])
def test_fuse_modules_folds_batch_norms_into_1d_and_3d_layers(dims):
    # ended in torch's "did not find fuser method" assertion
    conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
    bn = {1: nn.BatchNorm1d, 3: nn.BatchNorm3d}[dims]
    torch.manual_seed(0)
    model = envconv.disentangle(nn.Sequential(conv(3, 8, 3, stride=2), bn(8), nn.ReLU())).double()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, *[9] * dims, dtype=torch.float64)
    fused = fuse_modules(model, [["0", "1", "2"]])
    assert type(fused[0][0]).__name__ == f"DisentangledConv{dims}d" and isinstance(fused[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-10, atol=1e-10)


def test_fusion_refuses_what_would_change_the_output():
    conv_env = nn.Sequential(DisentangledConv2d(3, 4, 3, order="conv-env"), nn.BatchNorm2d(4)).eval()
    with pytest.raises(ValueError, match="conv->env layer"):
        fuse_modules(conv_env, [["0", "1"]])
    training = nn.Sequential(DisentangledConv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval mode"):
        fuse_modules(training, [["0", "1"]])
    with pytest.raises(NotImplementedError, match="quantization-aware"):
        torch.ao.quantization.fuse_modules_qat(
            training, [["0", "1"]],
            fuse_custom_config_dict={"additional_fuser_method_mapping": FUSER_METHODS})


def _pt2e(model, x, calibration):
    quantize = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e", reason="torchao is not installed")
    xnnpack = pytest.importorskip("torchao.testing.pt2e._xnnpack_quantizer", reason="torchao has no XNNPACK quantizer")
    quantizer = xnnpack.XNNPACKQuantizer().set_global(xnnpack.get_symmetric_quantization_config())
    prepared = quantize.prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    for batch in calibration:
        prepared(batch)
    quantized = quantize.convert_pt2e(prepared)
    convs = [n for n in quantized.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.conv2d.default]
    quantized_convs = sum("dequantize" in str(n.args[1].target) for n in convs)  # int8 weights, dequantized
    envelope_ops = sum(str(n.target).startswith("envconv.") for n in quantized.graph.nodes if n.op == "call_function")
    return quantized(x), quantized_convs, envelope_ops


def test_pt2e_post_training_quantization_of_a_converted_resnet():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    calibration = [torch.randn(4, 3, 64, 64) for _ in range(4)]
    plain = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        plain_want = plain(x)
        plain_got, plain_convs, _ = _pt2e(plain, x, calibration)
    assert plain_convs == 20
    plain_error = float((plain_got - plain_want).abs().max() / plain_want.abs().max())
    model = envconv.disentangle(torchvision.models.resnet18(num_classes=10)).eval()
    with torch.no_grad():
        want = model(x)
        _, hidden_convs, _ = _pt2e(model, x, calibration)
        assert hidden_convs == 13  # the 7 converted convolutions are inside envconv::envelope_conv
        assert len(separate_envelopes(model)) == 7 and torch.equal(model(x), want)
        got, convs, envelope_ops = _pt2e(model, x, calibration)
    assert convs == 20 and envelope_ops == 7  # every convolution int8; the envelopes stay in float
    error = float((got - want).abs().max() / want.abs().max())
    assert error < 0.1 and error < 3 * plain_error, (error, plain_error)
