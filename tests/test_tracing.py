"""Converted models in the tracers users run: torch.fx, torch.jit.trace, ONNX with a variable batch."""

import numpy as np
import pytest
import torch
from torch import nn

import envconv
from envconv import disentangle

torchvision = pytest.importorskip("torchvision")


def converted_resnet18():
    torch.manual_seed(0)
    model = disentangle(torchvision.models.resnet18(num_classes=7))
    with torch.no_grad():  # distinct sigmas, so a wrong envelope would show
        for name, p in model.named_parameters():
            if name.endswith("raw_sigma"):
                p.normal_()
    return model.eval()


def test_fx_symbolic_trace_and_feature_extractor_equal_eager():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = converted_resnet18()
    x = torch.randn(2, 3, 64, 64)
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert calls.count(envconv.functional.envelope_conv) == 7  # one leaf node per converted layer
    torch.testing.assert_close(traced(x), model(x))
    with pytest.raises(ValueError, match="in_channels=3 but the input has 1 channels"):  # checked when it runs
        traced(torch.randn(2, 1, 64, 64))
    features = create_feature_extractor(model, {"layer2": "c3", "layer4": "c5"})(x)
    torch.testing.assert_close(features["c5"], model.layer4(model.layer3(features["c3"])))


def test_jit_trace_checks_itself_and_runs_at_other_batch_sizes():
    model = converted_resnet18()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(2, 3, 32, 32), check_trace=True)
        for n in (1, 3, 5):
            x = torch.randn(n, 3, 32, 32)
            torch.testing.assert_close(traced(x), model(x))


def test_onnx_torchscript_exporter_with_a_dynamic_batch_axis(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = converted_resnet18()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, 32, 32)
        (y,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_onnx_torchscript_exporter_with_a_dynamic_batch_axis_in_every_dimensionality(tmp_path, dims):
    # 3-D failed: "ONNX export of convolution for kernel of unknown shape" (a kernel built from a traced size)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    layer = {1: envconv.DisentangledConv1d, 2: envconv.DisentangledConv2d, 3: envconv.DisentangledConv3d}[dims]
    torch.manual_seed(0)
    model = torch.nn.Sequential(layer(3, 4, 3, stride=2, padding=1, envelope_size=5),
                                envconv.GaussianEnvelope(4, size=3, spatial_dims=dims)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    shape = (3,) + (6,) * dims
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(2, *shape),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, *shape)
        (y,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_a_frozen_convolution_gets_a_frozen_envelope():
    model = torchvision.models.resnet18()
    model.conv1.weight.requires_grad_(False)  # as resnet_fpn_backbone(trainable_layers=3) freezes the stem
    disentangle(model)
    assert not model.conv1.envelope.raw_sigma.requires_grad
    assert model.layer2[0].conv1.envelope.raw_sigma.requires_grad


def test_a_dilated_segmentation_backbone_gets_the_papers_seven_places():
    """DeepLabV3's ResNet-50 dilates stages 3-4; an envconv-trained ResNet-50 still loads into it strictly."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    seg = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=False)
    names = disentangle(seg.backbone)
    trained = disentangle(torchvision.models.resnet50())
    assert len(envconv_names(seg.backbone)) == len(envconv_names(trained)) == 7
    assert envconv_names(seg.backbone) == envconv_names(trained)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("fc.")}
    seg.backbone.load_state_dict(state, strict=True)
    assert names is not None and seg.eval()(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def envconv_names(model):
    from envconv import DisentangledConv2d

    return [n for n, m in model.named_modules() if isinstance(m, DisentangledConv2d)]


def test_onnx_dynamo_exporter_with_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = converted_resnet18()
    path = tmp_path / "model.onnx"
    batch = torch.export.Dim("batch", min=1, max=16)
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=True, input_names=["x"],
                      output_names=["y"], dynamic_shapes=({0: batch},))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, 32, 32)
        (y,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("options", [
    dict(padding="same"),
    dict(padding="valid", stride=2),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=1, order="conv-env"),
    dict(kernel_size=1, stride=2),
    dict(padding=1, envelope_size=(3, 7)),
    dict(kernel_size=1, stride=2, envelope_size=(1, 5), sigma_per_axis=True),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torch_jit_script_is_refused_naming_what_works_and_trace_equals_eager(options):
    torch.manual_seed(0)
    layer = envconv.DisentangledConv2d(4, 6, **{"kernel_size": 3, **options})
    with torch.no_grad():
        layer.envelope.raw_sigma.normal_()
    x = torch.randn(2, 4, 9, 11)
    for module in (layer, layer.envelope, nn.Sequential(nn.Identity(), layer)):
        with pytest.raises(RuntimeError, match="torch.export.export or torch.onnx.export .* torch.jit.trace"):
            torch.jit.script(module)
    traced = torch.jit.trace(layer, x)
    torch.testing.assert_close(traced(x), layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_exporters_keep_a_size_per_axis(tmp_path, dynamo):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript" if dynamo else "onnx")
    torch.manual_seed(0)
    model = torch.nn.Sequential(envconv.DisentangledConv2d(3, 4, 3, padding=1, envelope_size=(3, 7)),
                                envconv.DisentangledConv2d(4, 4, 1, stride=2, envelope_size=(5, 1),
                                                           sigma_per_axis=True)).eval()
    with torch.no_grad():
        for m in model:
            m.envelope.raw_sigma.normal_()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 12, 16),), str(path), dynamo=dynamo, input_names=["x"],
                      output_names=["y"])
    x = torch.randn(2, 3, 12, 16)
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-5, rtol=1e-5)
