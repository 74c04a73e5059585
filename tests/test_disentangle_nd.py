"""Converting Conv1d / Conv3d networks: torchvision's video models, MONAI's SegResNet, a 1-D audio net."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import envconv
import reference
from envconv import DisentangledConv3d, GaussianEnvelope


def test_r3d_18_converts_at_the_papers_places_equals_the_plain_net_at_sigma_zero_and_trains():
    torch.manual_seed(0)
    plain = torchvision.models.video.r3d_18(num_classes=5).double().eval()
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        want = plain(x)
        at_zero = envconv.disentangle(copy.deepcopy(plain), method="fixed", sigma=0.0)
        assert torch.equal(at_zero(x), want)
    model = envconv.disentangle(copy.deepcopy(plain).float())
    rows = envconv.envelopes(model)
    assert [(r.name, r.path) for r in rows] == [
        ("stem.0", "stem"), ("layer2.0.conv1.0", "residual"), ("layer2.0.downsample.0", "identity"),
        ("layer3.0.conv1.0", "residual"), ("layer3.0.downsample.0", "identity"),
        ("layer4.0.conv1.0", "residual"), ("layer4.0.downsample.0", "identity")]
    assert all(isinstance(model.get_submodule(r.name), DisentangledConv3d) for r in rows)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = F.cross_entropy(model(x.float()), torch.tensor([1, 3]))
    loss.backward()
    assert all(float(model.get_submodule(r.name).envelope.raw_sigma.grad.abs().sum()) > 0 for r in rows)
    optimizer.step()
    # the weights rebuild a plain r3d_18, and shrink works on the 3-D envelopes
    rebuilt = envconv.load_disentangled(torchvision.models.video.r3d_18(num_classes=5), model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x.float()), model.eval()(x.float()))
    assert {r.size for r in envconv.envelopes(envconv.shrink(model, 3))} == {3}
    with pytest.raises(TypeError, match="method 'dw' converts 2-D convolutions; a Conv3d takes 'fixed', 'gaussian'"):
        envconv.disentangle(torchvision.models.video.r3d_18(), method="dw")


def _audio_net():
    return nn.Sequential(nn.Conv1d(1, 8, 9, stride=2, padding=4), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Conv1d(8, 16, 5, stride=2, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 2))


def test_a_converted_conv1d_network_learns_a_frequency_task():
    torch.manual_seed(0)
    t = torch.arange(64, dtype=torch.float32)
    labels = torch.randint(0, 2, (256,))
    freq = torch.where(labels == 0, 0.1, 0.35)[:, None]
    signals = (torch.sin(freq * t + torch.rand(256, 1) * 6.28) + 0.3 * torch.randn(256, 64))[:, None]
    model = envconv.disentangle(_audio_net())
    assert [type(model[i]).__name__ for i in (0, 3)] == ["DisentangledConv1d", "DisentangledConv1d"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(60):
        batch = slice(64 * (step % 4), 64 * (step % 4 + 1))
        loss = F.cross_entropy(model(signals[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])  # it learns: the loss halves
    with torch.no_grad():
        accuracy = float((model.eval()(signals).argmax(1) == labels).float().mean())
    assert accuracy > 0.9


@pytest.mark.parametrize("make, shape", [(_audio_net, (2, 1, 64)),
                                         (lambda: nn.Sequential(nn.Conv3d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                                                                nn.Conv3d(4, 4, 1, stride=2)), (2, 2, 4, 8, 8))])
def test_compile_fullgraph_and_export_with_a_dynamic_batch(make, shape):
    torch.manual_seed(0)
    model = envconv.disentangle(make()).eval()
    x = torch.randn(shape)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    other = torch.randn(5, *shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(other), model(other))
    assert any("envconv.envelope" in str(n.target) for n in program.graph.nodes)


def test_r3d_18_with_a_sigma_per_axis_trains_rebuilds_lists_and_shrinks_per_axis():
    from envconv import envelopes, load_disentangled, shrink
    from envconv.recipes.tables import envelope_table

    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(num_classes=3)
    envconv.disentangle(model, sigma_per_axis=True)
    shapes = [tuple(m.raw_sigma.shape) for m in model.modules() if isinstance(m, GaussianEnvelope)]
    assert shapes == [(3, 3), (64, 3), (64, 3), (128, 3), (128, 3), (256, 3), (256, 3)]
    x = torch.randn(2, 3, 4, 32, 32)
    optimizer = torch.optim.SGD([p for n, p in model.named_parameters() if "raw_sigma" in n], lr=1.0)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    stem = model.stem[0].envelope
    assert stem.raw_sigma.grad.shape == (3, 3) and bool((stem.raw_sigma.grad != 0).all())
    optimizer.step()
    # the time axis (column 0) moved apart from the image axes: each axis learns its own
    assert not torch.equal(stem.raw_sigma[:, 0], stem.raw_sigma[:, 1])
    rows = envelopes(model)
    want = np.sqrt(np.logaddexp(0.0, stem.raw_sigma.detach().double().numpy()))  # sqrt(softplus(raw)): (C, axes)
    np.testing.assert_allclose(np.asarray(rows[0].axis_sigmas).T, want, rtol=1e-15)
    assert "mean per axis" in envelope_table(rows)
    assert envelopes(model.state_dict())[0].axis_sigmas == rows[0].axis_sigmas
    rebuilt = load_disentangled(torchvision.models.video.r3d_18(num_classes=3), model.state_dict())
    model.eval()
    rebuilt.eval()
    assert torch.equal(rebuilt(x), model(x))
    # automatic shrinking per axis: along each, the channel keeping the least mass decides, with a
    # share (1 - eps)^(1/3) of the mass per axis so that the product keeps 1 - eps
    env = GaussianEnvelope.fixed(2, [[0.4, 0.4, 1.0], [0.4, 0.4, 0.4]], 9, spatial_dims=3, per_axis=True)
    size = shrink(env, "auto", eps=1e-2).size

    def mass(sigma, taps):  # the central taps' share of the 9-tap kernel (tests/reference.py)
        k = reference.kernel1d(np.log(np.expm1(sigma ** 2)), 9)[0]
        return k[4 - taps // 2: 5 + taps // 2].sum()

    def smallest(sigma):
        return min(t for t in (1, 3, 5, 7, 9) if mass(sigma, t) >= 0.99 ** (1 / 3))

    assert size == (smallest(0.4), smallest(0.4), smallest(1.0)) and smallest(0.4) < smallest(1.0)
    assert np.prod([mass(s, t) for s, t in zip((0.4, 0.4, 1.0), size)]) >= 0.99
    # the time and height axes need fewer taps than an isotropic envelope of the largest sigma
    assert size[0] < min(t for t in (1, 3, 5, 7, 9) if mass(1.0, t) ** 3 >= 0.99)


def test_monai_segresnet_converts_at_its_stem_and_strided_convs_and_trains_per_axis():
    """A 3-D volume network users have (MONAI, random init): the envelopes learn a sigma per axis."""
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    plain = monai_nets.SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8,
                                 blocks_down=(1, 2, 2), blocks_up=(1, 1)).double()
    model = envconv.disentangle(copy.deepcopy(plain), method="fixed", sigma=[0.0, 0.0, 0.0], sigma_per_axis=True)
    assert [e.name for e in envconv.envelopes(model)] == ["convInit.conv", "down_layers.1.0.conv",
                                                          "down_layers.2.0.conv"]
    x = torch.randn(1, 1, 8, 16, 16, dtype=torch.float64)
    plain.eval()
    model.eval()
    assert torch.equal(model(x), plain(x))  # sigma 0 on every axis: the plain network, exactly
    learned = envconv.disentangle(copy.deepcopy(plain), sigma_per_axis=True).train()
    learned(x).square().mean().backward()
    grads = [m.raw_sigma.grad for m in learned.modules() if isinstance(m, GaussianEnvelope)]
    assert [tuple(g.shape) for g in grads] == [(1, 3), (8, 3), (16, 3)] and all(bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_video_models_convert_at_the_stem_and_strided_convs(name):
    """Every video ResNet gets an envelope at each strided convolution (the stem among them), nowhere else.

    r2plus1d_18 factors a strided 3x3x3 convolution into a strided spatial and a strided temporal
    one: each gets its own envelope.
    """
    torch.manual_seed(0)
    plain = getattr(torchvision.models.video, name)(num_classes=4)
    strided = [n for n, m in plain.named_modules() if isinstance(m, nn.Conv3d) and max(m.stride) > 1]
    model = envconv.disentangle(copy.deepcopy(plain))
    found = envconv.envelopes(model)
    assert [e.name for e in found] == strided  # named by the layer that holds it
    assert found[0].path == "stem" and {e.path for e in found[1:]} == {"residual", "identity"}
    x = torch.randn(2, 3, 4, 32, 32)
    assert model(x).shape == (2, 4)


@pytest.mark.parametrize("envelope_size", [9, (3, 9, 9)])
def test_r3d_18_compiles_fullgraph_and_exports_with_a_dynamic_batch(envelope_size):
    torch.manual_seed(0)
    model = envconv.disentangle(torchvision.models.video.r3d_18(num_classes=4), sigma_per_axis=True,
                                envelope_size=envelope_size).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="eager")(x), want)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x[:1]), want[:1], rtol=1e-5, atol=1e-5)
    assert sum("envconv.envelope_conv" in str(n.target) for n in program.graph.nodes) == 7


def test_r3d_18_with_fewer_taps_in_time_trains_rebuilds_and_lists_the_sizes():
    """A size per axis, (3, 9, 9): 3 taps along the clip's time, 9 along its image axes."""
    from envconv import envelopes, load_disentangled

    torch.manual_seed(0)
    model = envconv.disentangle(torchvision.models.video.r3d_18(num_classes=3), envelope_size=(3, 9, 9))
    rows = envelopes(model)
    assert len(rows) == 7 and {r.size for r in rows} == {(3, 9, 9)}
    assert [r.size for r in envelopes(model.state_dict())] == [r.size for r in rows]
    x = torch.randn(2, 3, 4, 32, 32)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    stem = model.stem[0].envelope
    assert bool((stem.raw_sigma.grad != 0).all())
    # the stem's envelope is the scipy reference with 3 taps in time, 9 in height and width
    want = reference.envelope(x, stem.raw_sigma.detach(), (3, 9, 9))
    np.testing.assert_allclose(stem(x).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    rebuilt = load_disentangled(torchvision.models.video.r3d_18(num_classes=3), model.state_dict())
    assert {m.size for m in rebuilt.modules() if isinstance(m, GaussianEnvelope)} == {(3, 9, 9)}
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


