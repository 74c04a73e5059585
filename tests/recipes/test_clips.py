"""The moving-clips task: clip geometry by hand, a tiny training run, the report's statistics."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from envconv.recipes import clips


def test_each_clip_moves_its_garment_one_pixel_per_frame_inside_the_canvas():
    images = torch.rand(6, 28, 28)
    x = clips.make_clips(images, seed=3, noise=0.0)
    assert x.shape == (6, 1, clips.FRAMES, clips.CANVAS, clips.CANVAS)
    garments = F.avg_pool2d(images.unsqueeze(1), 2)[:, 0]
    for i in range(6):
        corners = []
        for t in range(clips.FRAMES):
            ys, xs = np.nonzero(x[i, 0, t].numpy())
            y0, x0 = int(ys.min()), int(xs.min())
            assert torch.equal(x[i, 0, t, y0:y0 + 14, x0:x0 + 14], garments[i])  # the garment, whole
            corners.append((y0, x0))
        steps = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(corners, corners[1:])}
        assert len(steps) == 1 and steps != {(0, 0)} and max(map(abs, steps.pop())) == 1
    # the same seed gives the same clips; noise is added per pixel and frame
    noisy = clips.make_clips(images, seed=3, noise=0.5)
    assert torch.equal(noisy, clips.make_clips(images, seed=3, noise=0.5))
    assert abs(float((noisy - x).std()) - 0.5) < 0.01


def test_a_tiny_run_trains_each_variant_and_records_sigmas_per_axis():
    torch.manual_seed(0)
    data = (torch.randn(16, 1, 8, 24, 24), torch.randint(0, 10, (16,)))
    row = clips.train_variant("gaussian-per-axis", 0, data, data, epochs=1, batch_size=8, log=lambda *a: None)
    assert 0 <= row["accuracy"] <= 100 and set(row["sigmas"]) == {"0.envelope", "3.envelope", "6.envelope"}
    assert all(len(v) == 3 for v in row["sigmas"].values())
    assert clips.train_variant("none", 0, data, data, epochs=1, log=lambda *a: None)["sigmas"] == {}
    with pytest.raises(ValueError, match="variant must be one of"):
        clips.train_variant("proj", 0, data, data)


def test_report_gives_paired_t_intervals_and_axis_sigmas(tmp_path):
    acc = {"none": [50.0, 52.0, 51.0], "gaussian": [53.0, 53.0, 55.0], "gaussian-per-axis": [55.0, 56.0, 56.0]}
    runs = [{"variant": v, "seed": s, "accuracy": a[s],
             "sigmas": {} if v == "none" else {"0.envelope": [1.0 + s, 0.5, 0.5] if v.endswith("axis") else [0.9] * 3}}
            for v, a in acc.items() for s in range(3)]
    results = {"setup": {"epochs": 1, "train_count": 10, "test_count": 5, "noise": 0.8, "frames": 8, "canvas": 24},
               "runs": runs}
    text = clips.report(results, figure=tmp_path / "fig.png")
    # per-axis - gaussian: differences 2, 3, 1 -> mean 2, std 1, t(0.975, 2) = 4.3027: 2 +- 2.48
    assert "- gaussian-per-axis - gaussian: +2.00 [-0.48, +4.48] (n=3)" in text
    assert "| 0.envelope | 0.900 | 2.000 / 0.500 / 0.500 |" in text
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "fig-envelope.png").stat().st_size > 0
    json.dumps(results)


def test_two_processes_sharing_an_out_folder_lose_no_run(fashion_root, tmp_path):
    # seeds 0 and 1 started together, the natural way to use two cores: each rewrote results.json whole
    out = tmp_path / "out"
    common = [sys.executable, "-m", "envconv", "clips", "--data", str(fashion_root), "--out", str(out),
              "--train-count", "16", "--test-count", "8", "--epochs", "1"]
    procs = [subprocess.Popen(common + ["--seeds", *seeds], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seeds in (["0"], ["1"])]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted((r["variant"], r["seed"]) for r in runs) == sorted(
        (variant, seed) for variant in clips.VARIANTS for seed in (0, 1))  # each run once, none lost


def test_a_run_claimed_by_another_process_is_skipped(fashion_root, tmp_path):
    from envconv.recipes.rundir import try_lock

    out = tmp_path / "out"
    out.mkdir()
    logged = []
    with try_lock(out / ".claim-none-seed0") as mine:  # another process is training it
        assert mine
        runs = clips.run_clips(fashion_root, out, seeds=[0], variants=["none"], epochs=1, train_count=8,
                               test_count=8, log=logged.append)
    assert runs == [] and logged == ["none, seed 0: training in another process, skipped"]
