"""envconv.recipes.analysis.gradients: the sigma and weight gradients' step sizes and consistency, by hand."""


import pytest
import torch
import torch.nn.functional as F

import envconv
from envconv.recipes.analysis.gradients import gradient_sizes, main, markdown


def test_step_sizes_and_consistency_equal_a_hand_computation_from_per_batch_gradients():
    torch.manual_seed(0)
    model = envconv.create_model("small_resnet20", num_classes=3, in_chans=1).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("raw_sigma"):
                p.normal_()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 1, 12, 12, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0]))
               for _ in range(3)]
    rows = gradient_sizes(model, batches, lr=0.05)
    # the hand computation: each batch's gradients by torch.autograd.grad, one batch at a time
    env = model.layer2[0].conv1.envelope
    weight = model.layer2[0].conv1.weight
    per_batch = []
    for x, y in batches:
        per_batch.append(torch.autograd.grad(F.cross_entropy(model(x), y), (env.raw_sigma, weight)))
    g = torch.stack([b[0] for b in per_batch])
    gw = torch.stack([b[1] for b in per_batch])
    raw = env.raw_sigma.detach()
    sigma = torch.sqrt(torch.log1p(torch.exp(raw)))
    dsigma = torch.exp(raw) / (1 + torch.exp(raw)) / (2 * sigma)
    row = next(r for r in rows if r["layer"] == "layer2.0.conv1")
    step = 0.05 * (g.mean(0).abs() * dsigma).mean()
    assert row["channels"] == 16 and row["batches"] == 3 and row["path"] == "residual"
    assert row["sigma"] == pytest.approx(float(sigma.mean()), rel=1e-12)
    assert row["sigma_step"] == pytest.approx(float(step), rel=1e-9)
    assert row["sigma_relative"] == pytest.approx(float(step / sigma.mean()), rel=1e-9)
    assert row["weight_relative"] == pytest.approx(float(0.05 * gw.mean(0).norm() / weight.norm()), rel=1e-9)
    assert row["sigma_consistency"] == pytest.approx(float(g.mean(0).abs().mean() / g.abs().mean()), rel=1e-9)
    norms = [float(b.norm()) for b in gw]
    assert row["weight_consistency"] == pytest.approx(float(gw.mean(0).norm()) / (sum(norms) / 3), rel=1e-9)
    assert 0 < row["sigma_consistency"] < 1 and not any(p.grad is not None for p in model.parameters())


def test_the_saved_measurement_prints_as_a_table(tmp_path, capsys):
    result = {"config": "c", "batches": 2, "batch_size": 8, "lr": 0.1, "machine": "CPU", "date": "2026-12-07",
              "rows": [{"layer": "conv1", "path": "stem", "channels": 1, "sigma": 0.8326, "sigma_step": 1.5e-3,
                        "sigma_relative": 1.8e-3, "weight_relative": 2.5e-2, "sigma_consistency": 0.9,
                        "weight_consistency": 0.5, "batches": 2}]}
    table = markdown(result)
    assert "| conv1 | stem | 1 | 0.833 | 1.50e-03 | 1.80e-03 | 2.50e-02 | 0.90 | 0.50 |" in table
    path = tmp_path / "g.json"
    path.write_text(__import__("json").dumps(result))
    assert main(["--report", str(path)]) == 0 and capsys.readouterr().out == table


def test_the_committed_table_is_the_table_of_the_committed_measurement():
    import json
    from pathlib import Path

    results = Path(__file__).resolve().parents[3] / "results" / "gradients"
    measured = json.loads((results / "fashion_mnist_resnet20.json").read_text())
    assert (results / "fashion_mnist_resnet20.md").read_text() == markdown(measured)
    assert [r["layer"] for r in measured["rows"]][0] == "conv1" and measured["batches"] == 40
