"""envconv.integrations.flops: third-party FLOP counters count a converted ResNet-50 as FlopCounterMode does.

FlopCounterMode's count of the envelope is checked against a hand count in
``tests/ops/test_graph_capture.py``; here each tool's count of the converted model must exceed
its count of the plain model by exactly FlopCounterMode's increase (the envelopes), and each
total must stand to FlopCounterMode's as the tool's plain total does (the tools differ from
FlopCounterMode on plain layers: BN, ReLU, pooling, biases).
"""

import copy
import re
from pathlib import Path

import pytest
import torch

import envconv
from envconv.integrations import flops

pytest.importorskip("torchvision")
from benchmarks import flop_counters  # noqa: E402  (needs torchvision)

TOOLS = flop_counters.TOOLS


@pytest.fixture(scope="module")
def counts():
    return flop_counters.measure()


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("size", ["9", "3"])
def test_counter_adds_the_envelopes_as_flop_counter_mode_does(tool, size, counts):
    pytest.importorskip(TOOLS[tool][0])
    ours, reference = counts[tool], counts["FlopCounterMode (torch)"]
    added = reference[size] - reference["plain"]  # 7 envelopes: 24.8 M MACs at k_g = 9
    assert added > 0
    assert ours[size] - ours["plain"] == pytest.approx(added, rel=1e-9)
    assert ours[size] / reference[size] == pytest.approx(ours["plain"] / reference["plain"], abs=1e-4)
    assert abs(ours[size] / reference[size] - 1) < 0.011  # the tools' own plain-layer rules: <= 1.09%


@pytest.mark.parametrize("tool", TOOLS)
def test_without_the_hooks_the_counters_miss_the_converted_layers(tool, counts):
    """What the hooks fix: without them every tool drops the 7 converted layers (0.77 GMAC)."""
    pytest.importorskip(TOOLS[tool][0])
    ours, reference = counts[tool], counts["FlopCounterMode (torch)"]
    assert ours["9 bare"] < ours["plain"] < ours["9"]
    assert reference["9 bare"] == reference["9"]  # FlopCounterMode needs nothing


def test_the_ecosystem_page_holds_the_measured_table(counts):
    page = (Path(__file__).parents[1] / "docs" / "ecosystem.md").read_text()
    block = re.search(r"<!-- flop-table -->\n(.*?)<!-- /flop-table -->", page, re.S)
    assert block, "docs/ecosystem.md lacks the <!-- flop-table --> block"
    assert block.group(1) == flop_counters.table(counts), "regenerate it: python -m benchmarks.flop_counters"


def test_envelope_macs_per_layer_kind():
    sampled = envconv.DisentangledConv2d(8, 16, 1, stride=2, envelope_size=5)  # smoothed at the strided pixels
    assert flops.envelope_macs(sampled, (2, 8, 10, 9), (2, 16, 5, 5)) == 2 * 8 * 5 * 5 * (10 + 5)
    after = envconv.DisentangledConv2d(8, 16, 3, padding=1, envelope_size=5, order="conv-env")  # on the output
    assert flops.envelope_macs(after, (2, 8, 10, 9), (2, 16, 10, 9)) == 2 * 16 * 5 * 9 * (10 + 10)
    assert flops.envelope_macs(envconv.GaussianEnvelope(8, 1), (2, 8, 10, 9), (2, 8, 10, 9)) == 0
    with pytest.raises(TypeError, match="expected a DisentangledConv1d/2d/3d or GaussianEnvelope"):
        flops.envelope_macs(torch.nn.Conv2d(8, 8, 3), (1, 8, 4, 4), (1, 8, 2, 2))


@pytest.mark.parametrize("tool", ["ptflops (pytorch)", "thop", "torchinfo"])
def test_module_hooks_count_a_free_standing_envelope_and_the_layer_run_apart(tool):
    pytest.importorskip(TOOLS[tool][0])
    layer = envconv.DisentangledConv2d(4, 6, 3, stride=2, padding=1, envelope_size=5)
    layer.recompute_envelope = False  # envelope module, then the conv: still counted once
    model = torch.nn.Sequential(envconv.GaussianEnvelope(4, 7), layer).eval()
    x = torch.randn(1, 4, 12, 12)
    total = flop_counters.count(tool, model, x, hooks=True)
    bias = 0 if tool == "thop" else 1  # thop's conv rule leaves the bias out, for a plain nn.Conv2d too
    # (torchinfo counted 0 for the free-standing envelope before)
    expected = 4 * 7 * 12 * 24 + 4 * 5 * 12 * 24 + 6 * 6 * 6 * (4 * 9 + bias)  # two envelopes and the conv
    assert total == expected
    plain = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
    assert flop_counters.count(tool, plain, x, hooks=True) == 6 * 6 * 6 * (4 * 9 + bias)


def _nd_nets():
    one = torch.nn.Sequential(torch.nn.Conv1d(2, 8, 9, stride=2, padding=4), torch.nn.ReLU(),
                              torch.nn.Conv1d(8, 16, 5, stride=2, padding=2), torch.nn.Conv1d(16, 16, 1, stride=2))
    three = torch.nn.Sequential(torch.nn.Conv3d(3, 8, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3)),
                                torch.nn.ReLU(), torch.nn.Conv3d(8, 8, 3, stride=2, padding=1))
    return [(one, torch.randn(1, 2, 64)), (three, torch.randn(1, 3, 4, 16, 16))]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("sizes", [{3: 9, 5: 9}, {3: (5,), 5: (1, 9, 5)}], ids=["one-size", "size-per-axis"])
def test_the_counters_add_the_envelopes_of_1d_and_3d_layers(tool, sizes):
    pytest.importorskip(TOOLS[tool][0])
    for plain, x in _nd_nets():
        model = envconv.disentangle(copy.deepcopy(plain), envelope_size=sizes[x.dim()]).eval()
        with torch.no_grad():
            reference = flop_counters.flop_counter_mode(model, x) - flop_counters.flop_counter_mode(plain.eval(), x)
        assert reference > 0
        added = flop_counters.count(tool, model, x, True) - flop_counters.count(tool, plain, x, True)
        assert added == pytest.approx(reference, rel=1e-9), type(plain[0]).__name__


@pytest.mark.parametrize("tool", TOOLS)
def test_the_counters_count_the_envelope_of_a_pool_by_hand(tool):
    pytest.importorskip(TOOLS[tool][0])
    model = envconv.disentangle(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.MaxPool2d(2)),
                                where="pools", stem="none").eval()
    x = torch.randn(1, 3, 16, 16)
    with_pool = flop_counters.count(tool, model, x, hooks=True)
    without = flop_counters.count(tool, torch.nn.Sequential(model[0]), x, hooks=True)
    pool_itself = flop_counters.count(tool, torch.nn.Sequential(torch.nn.MaxPool2d(2)), torch.randn(1, 8, 16, 16),
                                      hooks=True)
    assert with_pool - without - pool_itself == 8 * 9 * 16 * 32  # k_g 9 along both axes of 16 x 16, 8 channels
