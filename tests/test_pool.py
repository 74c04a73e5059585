"""EnvelopePool2d and the pool placements of disentangle, against the scipy reference and the unconverted nets."""

import copy
import warnings

import pytest
import torch
from torch import nn

import reference as ref
from envconv import EnvelopePool2d, disentangle, envelopes, select_layers
from envconv.pool import strided_pool

DOUBLE = dict(dtype=torch.float64)
POOLS = [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2), nn.AvgPool2d(3, 2, 1, count_include_pad=False)]


def pool_layer(pool, order, raw):
    layer = EnvelopePool2d.from_pool(pool, 3, envelope_size=5, order=order).double()
    with torch.no_grad():
        layer.envelope.raw_sigma.copy_(raw)
    return layer


@pytest.mark.parametrize("pool", POOLS, ids=repr)
def test_env_pool_is_the_pool_of_the_reference_envelope(pool):
    x = torch.randn(2, 3, 9, 8, **DOUBLE)
    raw = torch.tensor([-1.0, 0.2, 1.5], **DOUBLE)
    want = pool(torch.from_numpy(ref.envelope(x.numpy(), raw.numpy(), 5)))
    torch.testing.assert_close(pool_layer(pool, "env-pool", raw)(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", POOLS, ids=repr)
def test_pool_env_is_the_reference_envelope_at_the_pools_stride(pool):
    # antialiased-cnns' order: the pool densely, then the (here learned) blur evaluated every 2 pixels
    x = torch.randn(2, 3, 9, 8, **DOUBLE)
    raw = torch.tensor([-1.0, 0.2, 1.5], **DOUBLE)
    dense = copy.copy(pool)
    dense.stride = 1
    want = ref.envelope(dense(x).numpy(), raw.numpy(), 5, stride=(2, 2))
    got = pool_layer(pool, "pool-env", raw)(x)
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-12, atol=1e-12)
    assert got.shape == pool(x).shape


@pytest.mark.parametrize("order", ["env-pool", "pool-env"])
@pytest.mark.parametrize("pool", POOLS, ids=repr)
@pytest.mark.parametrize("shape", [(8, 8), (9, 7)])
def test_sigma_to_zero_gives_the_pool(order, pool, shape):
    x = torch.randn(2, 3, *shape, **DOUBLE)
    layer = pool_layer(pool, order, torch.full((3,), -1e4, **DOUBLE))
    assert torch.equal(layer(x), pool(x))


def test_refusals_name_the_problem():
    with pytest.raises(TypeError, match="MaxPool2d or nn.AvgPool2d"):
        EnvelopePool2d(nn.AdaptiveAvgPool2d(1), nn.Identity())
    with pytest.raises(ValueError, match="ceil_mode=False"):
        EnvelopePool2d.from_pool(nn.MaxPool2d(2, ceil_mode=True), 3, order="pool-env")
    with pytest.raises(ValueError, match="order must be one of"):
        EnvelopePool2d.from_pool(nn.MaxPool2d(2), 3, order="conv-env")
    assert strided_pool(nn.MaxPool2d(2)) and strided_pool(nn.AvgPool2d(3, (1, 2)))
    assert not strided_pool(nn.MaxPool2d(3, 1, 1)) and not strided_pool(nn.AdaptiveAvgPool2d(1))


def gradients_flow(model, x):
    model.train()
    model(x).square().mean().backward()
    sigmas = [e for n, e in model.named_parameters() if n.endswith("raw_sigma")]
    assert sigmas and all(s.grad is not None and s.grad.abs().sum() > 0 for s in sigmas)


torchvision = pytest.importorskip("torchvision")


def tv(name):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


@pytest.mark.parametrize("name, pools", [("vgg11", 5), ("densenet121", 4)])
def test_vgg_and_densenet_get_envelopes_at_their_pools_and_equal_the_original_at_sigma_zero(name, pools):
    plain = tv(name)
    x = torch.randn(2, 3, 64, 64)
    want = plain(x)
    for order in ("env-conv", "conv-env"):
        model = disentangle(copy.deepcopy(plain), where="pools", method="fixed", sigma=0.0, order=order)
        assert sum(isinstance(m, EnvelopePool2d) for m in model.modules()) == pools
        assert torch.equal(model(x), want)
    learned = disentangle(copy.deepcopy(plain), where="pools")
    channels = [e.channels for e in envelopes(learned)]
    assert len(channels) == pools + 1  # and the stem conv
    gradients_flow(learned, x)


def test_densenet_pool_channels_are_the_transitions():
    model = disentangle(tv("densenet121"), where="pools", stem="none")
    got = {n: m.envelope.channels for n, m in model.named_modules() if isinstance(m, EnvelopePool2d)}
    # the stem pool sees the stem's 64 channels; each transition halves its block's output
    assert got == {"features.pool0": 64, "features.transition1.pool": 128, "features.transition2.pool": 256,
                   "features.transition3.pool": 512}


def test_resnet_d_shortcut_pools_with_the_strided_convs():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    plain = timm.create_model("resnet26d").eval()
    x = torch.randn(1, 3, 64, 64)
    names = select_layers(plain, "downsample+pools")
    assert {f"layer{s}.0.downsample.0" for s in (2, 3, 4)} <= set(names)  # the average-pool shortcuts
    assert {f"layer{s}.0.conv2" for s in (2, 3, 4)} <= set(names)
    model = disentangle(copy.deepcopy(plain), where="downsample+pools", method="fixed", sigma=0.0)
    assert torch.equal(model(x), plain(x))


def test_the_default_on_a_net_that_downsamples_with_pools_converts_the_stem_and_warns():
    with pytest.warns(UserWarning, match="only the stem is converted.*where='pools'"):
        model = disentangle(tv("vgg11"))
    assert [e.name for e in envelopes(model)] == ["features.0"]
    with pytest.raises(ValueError, match="where='pools'"):
        disentangle(tv("vgg11"), stem="none")
    with pytest.raises(ValueError, match="selects no strided pool"):
        disentangle(tv("resnet18").layer1, where="pools", stem="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        disentangle(tv("resnet18"))  # the paper's nets: no warning


def test_pool_placements_refuse_before_changing_anything():
    model = tv("vgg11")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="cannot go at a pool"):
        disentangle(model, where="pools", method="dw")
    assert all(isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    class Shared(nn.Module):  # one pool object at two places with different channels
        def __init__(self):
            super().__init__()
            self.a, self.b, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1), nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(self.b(self.pool(self.a(x))))

    with pytest.raises(ValueError, match="called at places with 4 and 8 channels"):
        disentangle(Shared(), where="pools")

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.pool, self.fc = nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Linear(4 * 15 * 15, 2)

        def forward(self, x):
            return self.fc(self.pool(self.a(x)).flatten(1))

    with pytest.raises(ValueError, match=r"pass input_size"):
        disentangle(Tiny(), where="pools", input_size=(1, 1))
    assert isinstance(disentangle(Tiny(), where="pools", input_size=(32, 32)).pool, EnvelopePool2d)


def test_pool_envelopes_keep_device_dtype_mode_and_survive_a_state_dict_round_trip():
    model = disentangle(tv("vgg11").double().train(), where="pools")
    env = model.features[2]
    assert isinstance(env, EnvelopePool2d) and env.training and env.envelope.raw_sigma.dtype == torch.float64
    again = disentangle(tv("vgg11").double(), where="pools")
    again.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 32, **DOUBLE)
    assert torch.equal(model.eval()(x), again.eval()(x))
