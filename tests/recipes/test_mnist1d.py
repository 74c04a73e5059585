"""envconv.recipes.mnist1d: the generated data and its cache, the published CNN, the rows, resuming, the table."""

import json
import math

import numpy as np
import pytest
import torch

from envconv import DisentangledConv1d
from envconv.recipes import mnist1d
from envconv.recipes.cli import main as cli


def test_load_generates_the_published_split_caches_it_and_refuses_a_corrupt_cache(tmp_path):
    pytest.importorskip("mnist1d", reason="mnist1d is not installed")
    data = mnist1d.load(tmp_path)
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40) and data["x"].dtype == torch.float32
    assert sorted(torch.bincount(torch.cat([data["y"], data["y_test"]])).tolist()) == [500] * 10  # 500 per class
    assert abs(float(torch.cat([data["x"], data["x_test"]]).std()) - 1) < 1e-3  # the package normalises to sd 1
    assert torch.equal(mnist1d.load(tmp_path)["x"], data["x"])  # read back from the cache
    shuffled = mnist1d.load(tmp_path, shuffled=True)["x"]
    assert not torch.equal(shuffled, data["x"])
    # the same signals, their positions permuted once for all
    assert torch.allclose(torch.sort(shuffled, 1).values, torch.sort(data["x"], 1).values)
    np.savez(tmp_path / "mnist1d.npz", x=np.zeros(3), y=np.zeros(2), x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(ValueError, match="not an MNIST-1D cache"):
        mnist1d.load(tmp_path)


def test_conv_base_is_the_published_network():
    net = mnist1d.ConvBase()
    assert sum(p.numel() for p in net.parameters()) == 5210  # (1*5+1)*25 + 2*(25*3+1)*25 + (125+1)*10
    assert net(torch.randn(7, 40)).shape == (7, 10)


def test_rows_convert_the_three_convolutions():
    ours = mnist1d.build("ours", 0)
    assert [type(getattr(ours, f"conv{i}")).__name__ for i in (1, 2, 3)] == ["DisentangledConv1d"] * 3
    fixed = mnist1d.build("fixed-init", 0)
    assert isinstance(fixed.conv1, DisentangledConv1d) and not fixed.conv1.envelope.learnable
    plain = mnist1d.build("plain", 0)
    assert torch.equal(plain.conv1.weight, mnist1d.build("plain", 0).conv1.weight)  # seeded
    with pytest.raises(ValueError, match="unknown row 'nope'"):
        mnist1d.build("nope", 0)


def _tiny_data(n=200):
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 10
    x = torch.nn.functional.one_hot(y, 40).float() * 3 + 0.1 * torch.randn(n, 40, generator=gen)
    return {"x": x, "y": y, "x_test": x[:50], "y_test": y[:50]}


def test_training_learns_a_separable_toy_set_and_a_run_resumes(tmp_path):
    data = _tiny_data()
    first = mnist1d.run_one("ours", 3, data, tmp_path, steps=300, log=lambda m: None)
    assert first["test_acc"] > 90 and set(first["sigmas"]) == {"conv1", "conv2", "conv3"}
    again = mnist1d.run_one("ours", 3, data, tmp_path, steps=1, log=lambda m: None)  # read back, not retrained
    assert again == first


def test_report_pairs_each_row_with_the_plain_cnn_by_seed(tmp_path):
    accs = {"plain": [90.0, 92.0, 91.0], "ours": [91.0, 94.0, 92.5]}
    for row, values in accs.items():
        for seed, acc in enumerate(values):
            (tmp_path / f"{row}_seed{seed}.json").write_text(json.dumps({"row": row, "seed": seed, "shuffled": False,
                                                                         "test_acc": acc}))
    table = mnist1d.report(tmp_path)
    diffs = [1.0, 2.0, 1.5]  # ours - plain per seed: mean 1.5, sd 0.5, t(0.975, 2) = 4.303
    half = 4.302652729911275 * 0.5 / math.sqrt(3)
    assert f"| ours | 3 | 92.50 ± 1.50 | +1.50 [{1.5 - half:+.2f}, {1.5 + half:+.2f}] (n=3) |" in table
    assert table.index("| plain |") < table.index("| ours |") and sum(diffs) / 3 == 1.5
    assert cli(["mnist1d", "--report", "--out", str(tmp_path)]) == 0


def test_the_committed_table_regenerates_from_the_committed_runs():
    from pathlib import Path

    root = Path(__file__).parents[2] / "results" / "mnist1d"
    assert (root / "report.md").is_file(), "docs/receptive-field.md includes results/mnist1d/report.md"
    assert mnist1d.report(root) == (root / "report.md").read_text(), \
        "regenerate it: envconv mnist1d --report --write results/mnist1d/report.md"
