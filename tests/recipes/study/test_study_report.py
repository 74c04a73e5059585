import csv
import json
from pathlib import Path

import numpy as np
import pytest

from envconv.recipes.cli import main
from envconv.recipes.study import load_plan, run_study
from envconv.recipes.study.plan import STUDY_DIR, Claim
from envconv.recipes.study.report import RESULT_COLUMNS, _as_given, _plan_as_given, verdict, write_report
from envconv.recipes.study.stats import Difference
from study_helpers import write_plan


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """2 entries x 2 seeds x 1 epoch on 256 synthetic images, with the k3 evaluation and a digits probe."""
    tmp = tmp_path_factory.mktemp("study")
    plan = load_plan(write_plan(tmp, probe={"dataset": "digits", "epochs": 3}))
    run_study(plan, tmp / "out", quiet=True, log=lambda _: None)
    return tmp, plan


def _read(path):
    return json.loads(path.read_text())


def test_report_tables_equal_a_hand_computation_from_the_run_directories(finished_study, capsys):
    tmp, plan = finished_study
    assert main(["study", str(tmp / "plan.yaml"), "--out", str(tmp / "out"), "--report", "--docs",
                 str(tmp / "docs")]) == 0
    assert "(6 rows)" in capsys.readouterr().out
    errors = {(e, s): _read(tmp / "out" / f"{e}_seed{s}" / "summary.json")["final_val"]["top1_err"]
              for e in ("none", "gaussian") for s in (0, 1)}
    k3 = {s: _read(tmp / "out" / f"gaussian_seed{s}" / "eval-last-k3.json")["top1_err"] for s in (0, 1)}
    probe = {(e, s): _read(tmp / "out" / f"{e}_seed{s}" / "probe-last-digits.json")["val"]["top1_err"]
             for e in ("none", "gaussian") for s in (0, 1)}

    with open(tmp / "docs" / "reproduction" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [(r["run"], r["label"]) for r in rows] == [
        ("none_seed0", "baseline"), ("gaussian_seed0", "ours"), ("gaussian_seed0", "gaussian-k3"),
        ("none_seed1", "baseline"), ("gaussian_seed1", "ours"), ("gaussian_seed1", "gaussian-k3")]
    for r in rows:
        entry, seed = r["run"].rsplit("_seed", 1)
        expected = k3[int(seed)] if r["label"] == "gaussian-k3" else errors[(entry, int(seed))]
        assert float(r["test_top1_err"]) == pytest.approx(expected, abs=1e-4)
        if r["label"] != "gaussian-k3":
            assert float(r["probe_err"]) == pytest.approx(probe[(entry, int(seed))], abs=1e-4)
            seconds = [float(m["seconds"]) for m in csv.DictReader(open(tmp / "out" / r["run"] / "metrics.csv"))]
            assert float(r["train_seconds"]) == pytest.approx(sum(seconds), abs=1e-3)
        else:
            assert r["probe_err"] == "" and r["train_seconds"] == ""

    report = (tmp / "docs" / "reproduction.md").read_text()
    for entry, label in (("none", "baseline"), ("gaussian", "ours")):
        values = np.array([errors[(entry, s)] for s in (0, 1)])
        assert f"| {label} | " in report
        assert f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n=2)" in report
    diffs = np.array([errors[("gaussian", s)] - errors[("none", s)] for s in (0, 1)])
    half = 12.7062047 * diffs.std(ddof=1) / np.sqrt(2)   # t(0.975, 1 df)
    assert f"{diffs.mean():+.2f} [{diffs.mean() - half:+.2f}, {diffs.mean() + half:+.2f}] (n=2)" in report
    # the verdict row: the detectable difference is the half-width, the paper's Δ is 23.03 - 23.81
    claim_row = next(line for line in report.splitlines() if line.startswith("| 1a | envelopes help |"))
    assert f"| ±{half:.2f} | -0.78 |" in claim_row
    assert "![paired differences of every claim](reproduction/claims.png)" in report
    assert (tmp / "docs" / "reproduction" / "claims.png").stat().st_size > 1000
    # the shrunk evaluation reuses ours' checkpoints, so it has ours' extra parameters (its sigmas)
    extra = _read(tmp / "out" / "gaussian_seed0" / "summary.json")["parameters"] - _read(
        tmp / "out" / "none_seed0" / "summary.json")["parameters"]
    k3_row = next(line for line in report.splitlines() if line.startswith("| gaussian-k3 |"))
    assert extra > 0 and k3_row.endswith(f"| - | {extra:+,} |")
    assert "![Table 1a](reproduction/table-1a.png)" in report
    assert (tmp / "docs" / "reproduction" / "table-1a.png").stat().st_size > 1000
    assert "![sigma per channel](reproduction/sigma.png)" in report


@pytest.mark.parametrize("kind, low, high, expected", [
    ("better", -0.9, -0.1, "holds"), ("better", -0.5, 0.2, "inconclusive"),
    ("better", 0.1, 0.6, "does not hold (significantly worse)"),
    ("same", -0.2, 0.25, "holds"), ("same", -0.1, 0.5, "inconclusive"), ("same", 0.4, 0.9, "does not hold"),
])
def test_verdicts_follow_the_interval(kind, low, high, expected):
    claim = Claim("1a", "", "a", "b", kind)
    assert verdict(claim, Difference((low + high) / 2, low, high, 3), margin=0.3) == expected
    assert verdict(claim, Difference(0.0, None, None, 1), margin=0.3).startswith("inconclusive")


def test_the_report_says_which_machine_trained_which_run():
    from envconv.recipes.study.report import Result, _hardware_lines

    def result(run, cpu, threads=2):
        hw = {"cpu": cpu, "cores": 2, "torch_threads": threads, "torch": "2.14.1", "envconv": "0.1.0"}
        return Result(run, run.split("_")[0], ["1a"], "x", 0, 10, 8.0, None, 1.0, summary={"model": "m"},
                      info={"hardware": hw})

    one = _hardware_lines([result("none_seed0", "AMD EPYC"), result("gaussian_seed0", "AMD EPYC")])
    assert one == ["- Hardware: AMD EPYC (2 cores, 2 torch threads); torch 2.14.1, envconv 0.1.0."]
    two = _hardware_lines([result("none_seed0", "Intel Xeon"), result("none_seed1", "AMD EPYC", threads=1),
                           result("gaussian_seed0", "Intel Xeon")])
    assert two[1] == ("  - Intel Xeon (2 cores, 2 torch threads); torch 2.14.1, envconv 0.1.0: "
                      "none_seed0, gaussian_seed0")
    assert two[2] == "  - AMD EPYC (2 cores, 1 torch thread); torch 2.14.1, envconv 0.1.0: none_seed1"


def test_the_report_regenerates_identically_from_the_committed_files_alone(finished_study, tmp_path, monkeypatch):
    # A fresh clone has each run's small files but no checkpoints, logs of TensorBoard or locks.
    import shutil

    src, plan = finished_study
    assert main(["study", str(src / "plan.yaml"), "--out", str(src / "out"), "--report", "--docs",
                 str(tmp_path / "with-checkpoints")]) == 0
    clone = tmp_path / "clone"
    shutil.copytree(src / "out", clone, ignore=shutil.ignore_patterns("*.pt", "tensorboard", ".lock"))
    assert not list(clone.rglob("*.pt"))
    assert main(["study", str(src / "plan.yaml"), "--out", str(clone), "--report", "--docs",
                 str(tmp_path / "fresh")]) == 0
    for name in ("reproduction/results.csv", "reproduction.md"):
        before = (tmp_path / "with-checkpoints" / name).read_text()
        after = (tmp_path / "fresh" / name).read_text()
        assert after == before.replace(str(src / "out"), str(clone)).replace("with-checkpoints", "fresh"), name
    # the page's command writes it where it was written
    assert f"--report --docs {tmp_path / 'fresh'}\n" in (tmp_path / "fresh" / "reproduction.md").read_text()
    assert (tmp_path / "fresh" / "reproduction" / "sigma.png").is_file()  # drawn from sigma.json
    # and the runner treats the committed runs as finished: nothing is trained, evaluated or probed again
    from envconv.recipes.study import runner

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    for name in ("train", "evaluate_checkpoint", "linear_probe"):
        monkeypatch.setattr(runner, name, refuse)
    run_study(plan, clone, quiet=True, log=lambda _: None)


def test_the_sigma_movement_table_and_figure_come_from_each_runs_sigma_records(finished_study, tmp_path):
    from envconv.recipes.study.report import collect_results, sigma_trajectories

    tmp, plan = finished_study
    assert main(["study", str(tmp / "plan.yaml"), "--out", str(tmp / "out"), "--report", "--docs",
                 str(tmp_path / "docs")]) == 0
    report = (tmp_path / "docs" / "reproduction.md").read_text()
    trajectories = sigma_trajectories(plan, collect_results(plan, tmp / "out"))
    assert list(trajectories) == ["gaussian"]  # the learned-sigma entries: ours (no sigma table in this plan)
    initial = np.sqrt(np.log(2.0))  # raw sigma 0
    for layer, t in trajectories["gaussian"].items():
        records = [_read(tmp / "out" / f"gaussian_seed{s}" / "sigma.json") for s in (0, 1)]
        last = [np.array(r[-1]["sigma"][layer]) for r in records]
        assert t.shape == (2, 2, 3)  # seeds, epochs 0 and 1, (mean, min, max)
        np.testing.assert_allclose(t[:, 0], [[initial] * 3] * 2, rtol=1e-6)
        np.testing.assert_allclose(t[:, 1], [[s.mean(), s.min(), s.max()] for s in last], rtol=1e-12)
        move = 100 * (np.mean([s.mean() for s in last]) - initial) / initial
        row = next(line for line in report.splitlines() if line.startswith(f"| ours | {layer} | 2 |"))
        assert f"| {initial:.3f} | {np.mean([s.mean() for s in last]):.3f} | {move:+.1f}% |" in row
        assert row.endswith(f"| {min(s.min() for s in last):.3f}-{max(s.max() for s in last):.3f} |")
    assert "![sigma per layer over the epochs](reproduction/sigma-trajectories.png)" in report
    assert (tmp_path / "docs" / "reproduction" / "sigma-trajectories.png").stat().st_size > 1000


def test_object_scale_evaluations_test_each_checkpoint_at_other_scales(fashion_root, tmp_path):
    # garments on a 40x40 canvas, trained at scale 1, tested at 0.5 and 1.4 as well: a table and a figure
    from envconv.recipes.study.report import collect_results, errors_by_test_scale

    entries = [{"name": "none", "label": "baseline", "tables": ["1a"],
                "set": {"model.method": "none", "model.options": {}, "model.num_classes": 10,
                        "data.dataset": "fashion_mnist", "data.root": str(fashion_root), "data.image_size": 40,
                        "data.augment": "none"}}]
    evaluations = [{"name": f"none-s{s}", "of": "none", "object_scale": s, "tables": ["scale"]} for s in (0.5, 1.4)]
    evaluations += [{"name": f"none-bn-s{s}", "of": "none", "object_scale": s, "recalibrate_bn": 1, "tables": ["scale"]}
                    for s in (0.5, 1.0)]  # BatchNorm statistics recomputed over one training batch first
    evaluations += [{"name": "none-bn2", "of": "none", "object_scale": 1.4, "recalibrate_bn": 2, "tables": ["scale"]}]
    # (a single scale: no curve of its own)
    plan = load_plan(write_plan(tmp_path, seeds=(0,), entries=entries,
                                extra={"evaluations": evaluations, "claims": []}))
    run_study(plan, tmp_path / "out", quiet=True, log=lambda _: None)
    run_dir = tmp_path / "out" / "none_seed0"
    for s in (0.5, 1.4):
        result = _read(run_dir / f"eval-last-s{s:g}.json")
        assert result["object_scale"] == s and result["images"] == 64
    curves = errors_by_test_scale(plan, collect_results(plan, tmp_path / "out"))
    trained = _read(run_dir / "summary.json")["final_val"]["top1_err"]
    recalibrated = {s: _read(run_dir / f"eval-last-s{s:g}-bn1.json") for s in (0.5, 1.0)}
    assert all(r["recalibrate_bn"] == 1 and r["object_scale"] == s for s, r in recalibrated.items())
    assert curves == {("none", 0): {0.5: [_read(run_dir / "eval-last-s0.5.json")["top1_err"]], 1.0: [trained],
                                    1.4: [_read(run_dir / "eval-last-s1.4.json")["top1_err"]]},
                      ("none", 1): {s: [r["top1_err"]] for s, r in recalibrated.items()}}
    assert main(["study", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "out"), "--report", "--docs",
                 str(tmp_path / "docs")]) == 0
    report = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "| setting | 0.5x | 1x | 1.4x |" in report
    assert f"| baseline | {curves['none', 0][0.5][0]:.2f} (n=1) | {trained:.2f} (n=1) |" in report
    assert (f"| baseline, BatchNorm statistics recomputed (1 batches) | {recalibrated[0.5]['top1_err']:.2f} (n=1) | "
            f"{recalibrated[1.0]['top1_err']:.2f} (n=1) |  |") in report
    assert (tmp_path / "docs" / "reproduction" / "test-scale.png").stat().st_size > 1000


def test_learned_sigma_by_the_training_objects_scale(fashion_root, tmp_path, finished_study):
    # ours trained on garments at 0.5x and 1x of a 40x40 canvas: each layer's last-epoch channel mean by scale
    from envconv.recipes.study.report import collect_results, sigma_by_object_scale

    common = {"model.method": "gaussian", "model.num_classes": 10, "data.dataset": "fashion_mnist",
              "data.root": str(fashion_root), "data.image_size": 40, "data.augment": "none"}
    entries = [{"name": f"ours-{s}x", "tables": ["sigma"], "set": {**common, "data.object_scale": s}}
               for s in (0.5, 1.0)]
    plan = load_plan(write_plan(tmp_path, seeds=(0,), entries=entries,
                                extra={"baseline": "ours-1.0x", "evaluations": [], "claims": []}))
    run_study(plan, tmp_path / "out", quiet=True, log=lambda _: None)
    by_scale = sigma_by_object_scale(plan, collect_results(plan, tmp_path / "out"))
    for s in (0.5, 1.0):
        last = _read(tmp_path / "out" / f"ours-{s}x_seed0" / "sigma.json")[-1]["sigma"]
        assert set(by_scale) == set(last)
        for layer, sigmas in last.items():
            assert by_scale[layer][s] == [pytest.approx(float(np.mean(sigmas)), rel=1e-12)]
    assert main(["study", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "out"), "--report", "--docs",
                 str(tmp_path / "docs")]) == 0
    report = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "| layer | 0.5x | 1x |" in report
    assert f"| conv1 | {by_scale['conv1'][0.5][0]:.3f} (n=1) | {by_scale['conv1'][1.0][0]:.3f} (n=1) |" in report
    assert (tmp_path / "docs" / "reproduction" / "sigma-scale.png").stat().st_size > 1000
    tmp, one_scale = finished_study  # ours at one scale only: no such table
    assert sigma_by_object_scale(one_scale, collect_results(one_scale, tmp / "out")) == {}


def test_the_pages_commands_show_paths_from_the_working_directory(tmp_path, monkeypatch):
    # a bundled plan found by its name is absolute: its commands name it as typed, its paths are the repository's
    assert _plan_as_given(load_plan("fashion_mnist_scales")) == "fashion_mnist_scales"
    assert _plan_as_given(load_plan(STUDY_DIR / "fashion_mnist_scales.yaml")) == "fashion_mnist_scales"
    monkeypatch.chdir(tmp_path)
    assert _as_given(tmp_path / "src" / "studies" / "scales.yaml") == "src/studies/scales.yaml"
    assert _as_given(Path("docs/scales")) == "docs/scales"  # as typed
    outside = tmp_path.parent / "elsewhere" / "plan.yaml"
    assert _as_given(outside) == outside.as_posix()


@pytest.mark.parametrize("plan, docs", [("studies/fashion_mnist.yaml", "docs"),
                                        ("fashion_mnist_scales", "docs/scales")])
def test_the_committed_study_pages_regenerate_from_the_committed_runs(plan, docs, tmp_path, monkeypatch):
    # as a fresh clone holds them: each run's small files, no checkpoints
    root = Path(__file__).parents[3]
    monkeypatch.chdir(root)
    plan = load_plan(plan)
    write_report(plan, Path(f"results/study-{plan.name}"), tmp_path)
    for name in ("reproduction.md", "reproduction/results.csv"):
        page = (tmp_path / name).read_text().replace(tmp_path.as_posix(), docs)
        assert page == (root / docs / name).read_text(), \
            f"regenerate it: envconv study {plan.path.stem} --report --docs {docs}"


def test_a_study_without_the_papers_numbers_has_no_columns_for_them(finished_study, tmp_path):
    import dataclasses

    tmp, plan = finished_study
    with_paper = write_report(plan, tmp / "out", tmp_path / "with")["markdown"].read_text()
    assert "| table | claim of the paper | Δ [95% CI] |" in with_paper and "| paper Δ |" in with_paper
    assert "| ours | 23.03 |" in with_paper and "ResNet-50 on ImageNet" in with_paper
    own = dataclasses.replace(plan, entries=[dataclasses.replace(e, paper=None) for e in plan.entries],
                              evaluations=[dataclasses.replace(e, paper=None) for e in plan.evaluations])
    page = write_report(own, tmp / "out", tmp_path / "own")["markdown"].read_text()
    assert page.startswith("# Study `tiny`") and "ResNet-50 on ImageNet" not in page
    header = "| table | claim | Δ [95% CI] | verdict | comparison | metric | detectable |\n"
    assert header + "|---|---|---|---|---|---|---|\n" in page
    assert "| setting | ours top-1 err (%) | Δ to baseline [95% CI] | s/epoch (median) | extra params |" in page
    # the same rows but for the paper's cells
    assert page.count("\n| ") == with_paper.count("\n| ")
