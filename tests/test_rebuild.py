"""Rebuilding envelopes from weights (envconv.convert.rebuild) and the architecture records in state dicts."""

import subprocess
import sys
import warnings

import pytest
import torch
import torchvision
from torch import nn

import envconv
from envconv import DisentangledConv2d, EnvelopePool2d, GaussianEnvelope
from envconv.state_dict import load_weights


def _randomise_sigmas(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GaussianEnvelope):
                m.raw_sigma.copy_(torch.randn(m.raw_sigma.shape, generator=gen, dtype=torch.float64))
    return model


def _assert_same_model(rebuilt: nn.Module, trained: nn.Module, x: torch.Tensor) -> None:
    kinds = [(n, type(m).__name__) for n, m in trained.named_modules()]
    assert [(n, type(m).__name__) for n, m in rebuilt.named_modules()] == kinds
    assert envconv.envelopes(rebuilt) == envconv.envelopes(trained)
    rebuilt.eval(), trained.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))


def test_a_plain_resnet_gets_the_shrunk_envelopes_of_its_weights_back():
    torch.manual_seed(0)
    trained = envconv.shrink(_randomise_sigmas(envconv.disentangle(torchvision.models.resnet18(num_classes=7))), 3)
    plain = torchvision.models.resnet18(num_classes=7)
    with pytest.raises(RuntimeError, match="Unexpected key"):  # what a loader that rebuilds sees
        plain.load_state_dict(trained.state_dict())
    assert envconv.load_disentangled(plain, trained.state_dict()) is plain
    assert [e.size for e in envconv.envelopes(plain)] == [3] * 7
    _assert_same_model(plain, trained, torch.randn(2, 3, 64, 64))


def _mixed_net() -> nn.Sequential:
    """Every kind of envelope the records must carry, on layers where channels alone cannot tell."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),                        # 0: per-channel, size 5, reflect padding
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),              # 2: conv-env with in == out channels
        nn.MaxPool2d(2),                                      # 3: a shared sigma at a pool (pool-env)
        nn.Conv2d(8, 8, 1, stride=2),                         # 4: a fixed sigma
        nn.AvgPool2d(2),                                      # 5: env-pool, per channel
        nn.Flatten(), nn.LazyLinear(3),
    )
    net(torch.zeros(1, 3, 32, 32))
    return net


def _mixed_trained() -> nn.Sequential:
    torch.manual_seed(1)
    net = _mixed_net()
    net[0] = DisentangledConv2d.from_conv(net[0], envelope_size=5, envelope_padding_mode="reflect")
    net[2] = DisentangledConv2d.from_conv(net[2], order="conv-env")
    net[3] = EnvelopePool2d.from_pool(net[3], 8, envelope_size=7, order="pool-env", shared_sigma=True)
    net[4] = DisentangledConv2d.from_conv(net[4], envelope_size=3, sigma_init=-0.27, learnable=False)  # fixed
    net[5] = EnvelopePool2d.from_pool(net[5], 8)
    with torch.no_grad():
        for layer in (net[0], net[2], net[3], net[5]):
            layer.envelope.raw_sigma.normal_()
    return net


def test_sizes_orders_paddings_shared_and_fixed_sigmas_and_pools_come_back(tmp_path):
    trained = _mixed_trained()
    torch.manual_seed(2)
    rebuilt = envconv.load_disentangled(_mixed_net(), trained.state_dict())
    _assert_same_model(rebuilt, trained, torch.randn(2, 3, 32, 32))
    assert rebuilt[2].order == "conv-env" and rebuilt[3].order == "pool-env" and rebuilt[3].envelope.shared
    assert rebuilt[0].envelope.padding_mode == "reflect" and not rebuilt[4].envelope.learnable
    assert isinstance(rebuilt[0].envelope.raw_sigma, nn.Parameter)
    # the same through a file, as a training checkpoint holds it
    path = tmp_path / "ckpt.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, path)
    _assert_same_model(envconv.load_disentangled(_mixed_net(), path), trained, torch.randn(1, 3, 32, 32))


def test_safetensors_files_and_directories(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    trained = _mixed_trained()
    safetensors.save_file(trained.state_dict(), tmp_path / "model.safetensors")
    for source in (tmp_path / "model.safetensors", tmp_path):
        _assert_same_model(envconv.load_disentangled(_mixed_net(), source), trained, torch.randn(1, 3, 32, 32))
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_weights(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        load_weights(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else None


def test_a_size_mismatch_is_an_error_even_without_strict():
    trained = envconv.shrink(envconv.disentangle(torchvision.models.resnet18()), 3)
    other = envconv.disentangle(torchvision.models.resnet18())  # k_g = 9
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"conv1\.envelope\._extra_state: the weights are of an envelope "
                                               r"of size k_g=3, this one has k_g=9"):
            other.load_state_dict(trained.state_dict(), strict=strict)
    envconv.shrink(other, 3).load_state_dict(trained.state_dict())  # the remedy the message names


def test_order_padding_and_channel_mismatches_are_errors():
    state = DisentangledConv2d(8, 8, 3, order="conv-env").state_dict()
    with pytest.raises(RuntimeError, match="order='conv-env', this one has order='env-conv'"):
        DisentangledConv2d(8, 8, 3).load_state_dict(state)
    state = DisentangledConv2d(8, 8, 3, envelope_padding_mode="circular").state_dict()
    with pytest.raises(RuntimeError, match="padding_mode='circular', this one pads 'zeros'"):
        DisentangledConv2d(8, 8, 3).load_state_dict(state)
    state = GaussianEnvelope(16, shared=True).state_dict()
    with pytest.raises(RuntimeError, match="over 16 channels, this one has 8"):
        GaussianEnvelope(8, shared=True).load_state_dict(state)
    pool_state = EnvelopePool2d.from_pool(nn.MaxPool2d(2), 4, order="pool-env").state_dict()
    with pytest.raises(RuntimeError, match="order='pool-env', this one has order='env-pool'"):
        EnvelopePool2d.from_pool(nn.MaxPool2d(2), 4).load_state_dict(pool_state)


@pytest.mark.parametrize("record", [torch.tensor([1, 4, 1, 0, 3, 2]), torch.tensor([2, 9, 1, 0, 3, 2]),
                                    torch.tensor([1, 9, 1]), torch.tensor([1.0, 9.5, 1, 0, 3, 2]),
                                    torch.tensor([1, 9, 1, 0, 3, 4]),
                                    # non-finite entries (what half precision makes of a large entry), past k_g's bound
                                    torch.tensor([1.0, 9, 1, 0, 3, float("inf")]),
                                    torch.tensor([1.0, 9, 1, 0, float("nan"), 2]),
                                    torch.tensor([1, 2 ** 40 + 1, 1, 0, 3, 2]), torch.tensor([1, 1025, 1, 0, 3, 2])])
def test_corrupt_records_are_named(record):
    state = dict(GaussianEnvelope(3).state_dict(), _extra_state=record)
    with pytest.raises(RuntimeError, match="_extra_state: .*(corrupt|newer|int64 record)"):
        GaussianEnvelope(3).load_state_dict(state)
    with pytest.raises(ValueError, match="corrupt|newer|int64 record"):
        envconv.envelopes(state)


def test_a_state_dict_cast_to_half_precision_keeps_its_records():
    trained = envconv.shrink(envconv.disentangle(torchvision.models.resnet18()), 5)
    half = {k: v.half() for k, v in trained.state_dict().items()}  # what fp16 checkpoint converters do
    rebuilt = envconv.load_disentangled(torchvision.models.resnet18(), half)
    assert [e.size for e in envconv.envelopes(rebuilt)] == [5] * 7
    with pytest.raises(RuntimeError, match="k_g=5, this one has k_g=9"):
        envconv.disentangle(torchvision.models.resnet18()).load_state_dict(half)


def test_state_dicts_without_their_records_are_refused_naming_the_record():
    trained = envconv.disentangle(torchvision.models.resnet18())
    stripped = {k: v for k, v in trained.state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*conv1\._extra_state"):  # a missing key, as any tensor
        envconv.disentangle(torchvision.models.resnet18()).load_state_dict(stripped)
    envconv.disentangle(torchvision.models.resnet18()).load_state_dict(stripped, strict=False)
    with pytest.raises(ValueError, match="have conv1.envelope.raw_sigma but not its record conv1.envelope._extra_st"):
        envconv.load_disentangled(torchvision.models.resnet18(), stripped)


def test_layers_the_model_lacks_or_cannot_hold_an_envelope():
    state = DisentangledConv2d(3, 4, 3).state_dict()
    with pytest.raises(ValueError, match="envelope at 'body.0', which Sequential does not have"):
        envconv.disentangle_like(nn.Sequential(nn.Conv2d(3, 4, 3)), {f"body.0.{k}": v for k, v in state.items()})
    with pytest.raises(ValueError, match="at '0', but that module is a BatchNorm2d"):
        envconv.disentangle_like(nn.Sequential(nn.BatchNorm2d(3)), {f"0.{k}": v for k, v in state.items()})
    with pytest.raises(TypeError, match="TorchScript"):
        envconv.disentangle_like(torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3))), {})


def test_a_shared_convolution_stays_shared_and_converted_layers_are_checked_not_rebuilt():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    trained = envconv.disentangle(nn.Sequential(conv, nn.ReLU(), conv), where=["0"])
    state = trained.state_dict()
    conv = nn.Conv2d(4, 4, 3, padding=1)
    rebuilt = envconv.load_disentangled(nn.Sequential(conv, nn.ReLU(), conv), state)
    assert rebuilt[0] is rebuilt[2] and isinstance(rebuilt[0], DisentangledConv2d)
    partly = envconv.disentangle(torchvision.models.resnet18(), where=["layer2.0.conv1"], stem="none")
    kept = partly.layer2[0].conv1
    full = envconv.disentangle(torchvision.models.resnet18())
    envconv.load_disentangled(partly, full.state_dict())
    assert partly.layer2[0].conv1 is kept and len(envconv.envelopes(partly)) == 7


def test_timm_pretrained_cfg_overlay_file_rebuilds_from_the_weights(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is not installed")
    envconv.register_timm_models()
    trained = envconv.shrink(_randomise_sigmas(timm.create_model("envconv_resnet18", num_classes=5)), 3)
    path = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), path)
    loaded = timm.create_model("envconv_resnet18", pretrained=True, num_classes=5,
                               pretrained_cfg_overlay=dict(file=str(path)))
    _assert_same_model(loaded, trained, torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="envelopes come from the file; do not pass envelope_size"):
        timm.create_model("envconv_resnet18", pretrained=True, envelope_size=9,
                          pretrained_cfg_overlay=dict(file=str(path)))
    # timm's own checkpoint_path loads strictly into the converted model: the size check speaks
    with pytest.raises(RuntimeError, match="k_g=3, this one has k_g=9"):
        timm.create_model("envconv_resnet18", num_classes=5, checkpoint_path=str(path))


def test_hugging_face_from_pretrained_then_load_disentangled(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
                                       layer_type="basic", num_labels=4)
    torch.manual_seed(0)
    trained = envconv.shrink(_randomise_sigmas(envconv.disentangle(
        transformers.ResNetForImageClassification(config))), 5)
    assert len(envconv.envelopes(trained)) == 5  # the stem and the strided convs of stages 2-3
    trained.save_pretrained(tmp_path)  # model.safetensors: the records are int64 tensors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = transformers.ResNetForImageClassification.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    assert envconv.envelopes(plain) == []  # from_pretrained alone drops them, and the logits differ
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(x).logits, trained.eval()(x).logits)
    envconv.load_disentangled(plain, tmp_path)
    assert envconv.envelopes(plain) == envconv.envelopes(trained)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x).logits, trained.eval()(x).logits)


def test_lightning_checkpoint_of_a_module_that_builds_a_plain_net(tmp_path):
    pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed")

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=3)  # plain: its builder knows nothing of envconv

        def forward(self, x):
            return self.net(x)

    trained = Classifier()
    envconv.disentangle(trained.net)
    _randomise_sigmas(trained)
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.strategy.connect(trained)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        Classifier.load_from_checkpoint(tmp_path / "last.ckpt")
    module = envconv.load_disentangled(Classifier(), tmp_path / "last.ckpt")  # the checkpoint's "state_dict"
    _assert_same_model(module, trained, torch.randn(1, 3, 64, 64))

    class Rebuilding(Classifier):  # the docs' recipe: Lightning calls this hook before load_state_dict
        def on_load_checkpoint(self, checkpoint):
            envconv.disentangle_like(self, checkpoint["state_dict"])

    _assert_same_model(Rebuilding.load_from_checkpoint(tmp_path / "last.ckpt").net, trained.net,
                       torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("raw, problem", [(torch.zeros(0), "empty"), (torch.tensor([0.0, float("nan"), 0.0]),
                                                                        "not finite")])
def test_an_empty_or_non_finite_sigma_is_named_with_its_file_by_the_command_line(tmp_path, raw, problem):
    state = dict(torch.nn.Sequential(DisentangledConv2d(3, 4, 3)).state_dict())
    state["0.envelope.raw_sigma"] = raw  # was ZeroDivisionError (empty) and a table of nan
    with pytest.raises(ValueError, match=f"0.envelope.raw_sigma is {problem}"):
        envconv.envelopes(state)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    done = subprocess.run([sys.executable, "-m", "envconv", "envelopes", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{path}: 0.envelope.raw_sigma is {problem}" in done.stderr


def test_an_infinite_record_entry_is_named_with_its_file_and_key_by_the_command_line(tmp_path):
    state = {k: v.double() for k, v in torch.nn.Sequential(DisentangledConv2d(3, 4, 3)).state_dict().items()}
    state["0.envelope._extra_state"][4] = float("inf")  # was OverflowError with a traceback
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    done = subprocess.run([sys.executable, "-m", "envconv", "envelopes", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{path}: envelope record 0.envelope._extra_state: record" in done.stderr
    assert "not finite whole numbers" in done.stderr


def test_weights_of_a_3d_layer_loaded_at_a_conv2d_say_the_envelope_is_3d():
    trained = nn.Sequential(envconv.disentangle(nn.Sequential(nn.Conv3d(3, 8, 3, stride=2))))
    plain = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2)))
    with pytest.raises(RuntimeError, match="the weights are of a 3-D envelope, this one is 2-D"):
        envconv.load_disentangled(plain, trained.state_dict())
