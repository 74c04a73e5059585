"""Envelopes in front of re-parameterizable blocks (envconv.convert.reparam): timm's reparameterize_model keeps them."""

import copy

import pytest
import torch
from torch import nn

import envconv
from envconv import DisentangledConv2d, GaussianEnvelope
from envconv.convert.reparam import envelope_block, is_envelope_block

timm = pytest.importorskip("timm", reason="timm is not installed")
from timm.utils import reparameterize_model  # noqa: E402

# (model, input side, the blocks that get the envelopes at the paper's rule)
NETS = [("repvgg_a0", 64, ["stem", "stages.0.0", "stages.1.0", "stages.2.0", "stages.3.0"]),
        ("mobileone_s0", 64, None), ("fastvit_t8", 64, None), ("levit_128s", 224, None)]


def _randomise(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GaussianEnvelope):
                m.raw_sigma.copy_(torch.randn(m.raw_sigma.shape, generator=gen, dtype=torch.float64))
            elif isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so that folding them matters
                m.running_mean.normal_(generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return model


@pytest.fixture
def float64_default():
    """Some blocks' fuse() builds its new convolution in the default dtype (LeViT's ConvNorm)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.mark.parametrize("name, side, blocks", NETS, ids=[n[0] for n in NETS])
def test_reparameterize_model_keeps_every_envelope_and_the_output(name, side, blocks, float64_default):
    torch.manual_seed(0)
    plain = _randomise(timm.create_model(name, num_classes=10)).double().eval()
    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    with torch.no_grad():
        want = plain(x)
        at_zero = envconv.disentangle(copy.deepcopy(plain), method="fixed", sigma=0.0, input_size=(side, side))
        assert torch.equal(at_zero(x), want)  # sigma 0: the plain net exactly
    model = _randomise(envconv.disentangle(copy.deepcopy(plain), input_size=(side, side)), seed=1).eval()
    rows = envconv.envelopes(model)
    if blocks is not None:
        assert [r.name for r in rows] == blocks and all(is_envelope_block(model.get_submodule(b)) for b in blocks)
    assert len(rows) >= 3
    with torch.no_grad():
        before = model(x)
        fused = reparameterize_model(model)
        after = fused(x)
    assert envconv.envelopes(fused) == rows  # the same envelopes, the same sigmas
    assert not torch.allclose(before, want)  # the envelopes change the output...
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9 * float(before.abs().max()))  # ...fused too


def test_the_blocks_keep_their_class_keys_and_methods_and_rebuild_from_weights():
    plain = timm.create_model("repvgg_a0", num_classes=10)
    model = envconv.disentangle(copy.deepcopy(plain))
    assert isinstance(model.stem, type(plain.stem)) and type(model.stem).__name__ == "EnvelopeRepVggBlock"
    added = set(model.state_dict()) - set(plain.state_dict())
    assert added == {f"{b}.envelope.{k}" for b in ("stem", "stages.0.0", "stages.1.0", "stages.2.0", "stages.3.0")
                     for k in ("raw_sigma", "_extra_state")}
    _randomise(model)
    rebuilt = envconv.load_disentangled(timm.create_model("repvgg_a0", num_classes=10), model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    assert envconv.shrink(model, 3).stem.envelope.size == 3


def test_fuse_returns_a_disentangled_conv_with_the_same_envelope():
    class ConvBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)

        def forward(self, x):
            return self.bn(self.conv(x))

        def fuse(self):
            return torch.nn.utils.fusion.fuse_conv_bn_eval(self.conv, self.bn)

    block = _randomise(ConvBN()).double().eval()
    envelope = GaussianEnvelope(4, size=5, init=0.7, dtype=torch.float64)
    envelope_block(block, envelope)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    fused = block.fuse()
    assert type(fused) is DisentangledConv2d and fused.envelope is envelope
    torch.testing.assert_close(fused(x), block(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="already has an attribute 'envelope'"):
        envelope_block(block, envelope)
    with pytest.raises(ValueError, match="container"):
        envelope_block(nn.Sequential(nn.Conv2d(4, 4, 1)), envelope)


def test_what_cannot_go_in_front_of_a_block_is_refused_before_anything_changes():
    plain = timm.create_model("repvgg_a0", num_classes=10)
    keys = set(plain.state_dict())
    with pytest.raises(ValueError, match=r"stem.conv_kxk.conv is inside stem \(RepVggBlock\).*method 'dw' cannot"):
        envconv.disentangle(plain, method="dw")
    with pytest.raises(ValueError, match="order='conv-env' cannot"):
        envconv.disentangle(plain, order="conv-env")
    repvit = timm.create_model("repvit_m0_9", num_classes=10)
    with pytest.raises(ValueError, match="container whose fold reads its children in order"):
        envconv.disentangle(repvit)
    assert set(plain.state_dict()) == keys and envconv.envelopes(plain) == envconv.envelopes(repvit) == []


def test_a_fuse_that_returns_a_container_keeps_the_envelope_in_front():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

        def fuse(self):
            return nn.Sequential(self.conv, nn.Identity())

    block = envelope_block(Branches(), GaussianEnvelope(3, size=5, init=0.4))
    x = torch.randn(1, 3, 8, 8)
    fused = block.fuse()
    assert isinstance(fused, nn.Sequential) and fused[0] is block.envelope
    torch.testing.assert_close(fused(x), block(x), rtol=0, atol=0)


def test_a_converted_reparameterizable_model_pickles_and_reloads_equal(tmp_path):
    """The ``Envelope<Block>`` classes are made at run time: torch.save(model) and spawn workers must rebuild them."""
    import pickle

    torch.manual_seed(0)
    model = _randomise(envconv.disentangle(timm.create_model("repvgg_a0", num_classes=10), input_size=(64, 64)))
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.save(model, tmp_path / "model.pt")
    for loaded in (torch.load(tmp_path / "model.pt", weights_only=False), pickle.loads(pickle.dumps(model))):
        assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
        assert is_envelope_block(loaded.stem) and envconv.envelopes(loaded) == envconv.envelopes(model)
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
