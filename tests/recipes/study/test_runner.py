import json

import pytest
import torch

from envconv.recipes import rundir
from envconv.recipes.cli import main
from envconv.recipes.rundir import RunDir, load_checkpoint
from envconv.recipes.study import load_plan, run_study
from envconv.recipes.study import runner as runner_module
from envconv.recipes.training import trainer
from study_helpers import write_plan


def _weights(run_dir):
    return load_checkpoint(run_dir / "last.pt")["model"]


def test_a_study_trains_evaluates_probes_and_skips_what_is_finished(tmp_path, monkeypatch):
    plan = load_plan(write_plan(tmp_path, seeds=(0,), probe={"dataset": "digits", "epochs": 2}))
    out = tmp_path / "out"
    lines = []
    run_study(plan, out, quiet=True, log=lines.append)
    for name in ("none_seed0", "gaussian_seed0"):
        for file in ("summary.json", "last.pt", "probe-last-digits.json", "study-run.json"):
            assert (out / name / file).is_file(), (name, file)
    k3 = json.loads((out / "gaussian_seed0" / "eval-last-k3.json").read_text())
    assert set(k3["envelope_sizes"].values()) == {3}
    assert not (out / "none_seed0" / "eval-last-k3.json").exists()
    assert "run 2/2 gaussian_seed0: training" in "\n".join(lines)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("envconv.recipes.study.runner.train", no_training)
    lines.clear()
    run_study(plan, out, quiet=True, log=lines.append)
    assert "run 1/2 none_seed0: finished: evaluations only" in lines[0]


def test_a_study_stopped_part_way_resumes_to_the_same_weights(tmp_path, monkeypatch):
    plan = load_plan(write_plan(tmp_path, seeds=(0,), epochs=2))
    run_study(plan, tmp_path / "full", quiet=True, log=lambda _: None)

    real = trainer.train_one_epoch
    seen = []

    def stop_in_second_run(*args, **kwargs):   # Ctrl-C in epoch 2 of the second run
        seen.append(kwargs["epoch"])
        if len(seen) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", stop_in_second_run)
    with pytest.raises(KeyboardInterrupt):
        run_study(plan, tmp_path / "cut", quiet=True, log=lambda _: None)
    assert load_checkpoint(tmp_path / "cut" / "gaussian_seed0" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    lines = []
    run_study(plan, tmp_path / "cut", quiet=True, log=lines.append)
    assert any("gaussian_seed0: resuming after epoch 1" in line for line in lines)
    for name in ("none_seed0", "gaussian_seed0"):
        full, cut = _weights(tmp_path / "full" / name), _weights(tmp_path / "cut" / name)
        assert all(torch.equal(full[k], cut[k]) for k in full), name


def test_dry_run_lists_the_grid_and_trains_nothing(tmp_path, capsys, monkeypatch):
    path = write_plan(tmp_path)
    timed = []
    real = runner_module.measure_epoch_seconds
    monkeypatch.setattr(runner_module, "measure_epoch_seconds", lambda *a, **k: timed.append(1) or real(*a, **k))
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 entries, 4 runs (seeds [0, 1]; 0 entries have their own)" in out
    assert out.count("to train") == 4 and "training time left: unknown (no finished epochs here" in out
    assert timed == []  # returns in seconds: nothing timed unless asked (it took 13 min on a busy machine)
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--dry-run", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert len(timed) == 2 and "estimated training time left" in out and "by timing" in out
    assert not (tmp_path / "out").exists()
    assert main(["study", str(path), "--estimate"]) == 2  # --estimate without --dry-run


def test_study_command_errors(tmp_path, capsys):
    assert main(["study", str(tmp_path / "missing.yaml")]) == 2
    assert "no study plan" in capsys.readouterr().err


def test_a_run_that_diverges_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    from envconv.recipes.study import write_report
    from envconv.recipes.study.runner import train as real_train
    from envconv.recipes.training.engine import NonFiniteLossError

    plan = load_plan(write_plan(tmp_path, seeds=(0,)))
    out = tmp_path / "out"

    def diverging(config, **kwargs):
        if config["model"]["method"] == "gaussian":
            raise NonFiniteLossError("the training loss is nan in epoch 1, step 3")
        return real_train(config, **kwargs)

    monkeypatch.setattr("envconv.recipes.study.runner.train", diverging)
    lines = []
    run_study(plan, out, quiet=True, log=lines.append)
    assert (out / "none_seed0" / "summary.json").is_file()
    assert json.loads((out / "gaussian_seed0" / "failed.json").read_text())["error"].startswith("the training loss")
    assert lines[-1].endswith("1 of 2 runs finished in " + str(out) + "; failed: gaussian_seed0")
    lines.clear()
    run_study(plan, out, quiet=True, log=lines.append)            # not retried: it would fail again
    assert any("skipped: it failed before" in line for line in lines)
    report = write_report(plan, out, tmp_path / "docs")["markdown"].read_text()
    assert "Failed, left out: gaussian_seed0 (the training loss is nan in epoch 1, step 3)." in report


def test_an_unfinished_run_without_its_checkpoint_restarts_cleanly(tmp_path):
    """Committed records of a run whose checkpoint stayed on another machine: the run starts again."""
    plan = load_plan(write_plan(tmp_path, seeds=(0,)))
    run_dir = tmp_path / "out" / "none_seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch,lr\n1,0.1\n")
    lines = []
    run_study(plan, tmp_path / "out", quiet=True, log=lines.append)
    assert any("restarting the run" in line for line in lines)
    assert (run_dir / "summary.json").exists()
    assert [row.split(",")[0] for row in (run_dir / "metrics.csv").read_text().splitlines()[1:]] == ["1"]


@pytest.mark.skipif(rundir.fcntl is None, reason="no file locks on this platform")
@pytest.mark.parametrize("lock, said", [(RunDir.STUDY_LOCK, "skipped, another envconv study process is working on it"),
                                        (RunDir.LOCK, "is being trained by another process")])
def test_a_run_another_process_holds_is_skipped_and_picked_up_later(tmp_path, lock, said):
    """Two study processes on one plan: the run the other one holds is left to it, the rest is trained."""
    plan = load_plan(write_plan(tmp_path, seeds=(0,)))
    out, busy = tmp_path / "out", tmp_path / "out" / "gaussian_seed0"
    busy.mkdir(parents=True)
    lines = []
    with open(busy / lock, "w") as handle:            # what the other process holds while it works
        rundir.fcntl.flock(handle, rundir.fcntl.LOCK_EX | rundir.fcntl.LOCK_NB)
        run_study(plan, out, quiet=True, log=lines.append)
    assert (out / "none_seed0" / "summary.json").is_file()
    assert not (busy / "summary.json").exists() and not (busy / "last.pt").exists()
    assert any(line.endswith(said) for line in lines), lines
    assert lines[-1].endswith("1 of 2 runs finished in " + str(out) + "; skipped while another process had them "
                              "(run the command again when it is done): gaussian_seed0")
    (busy / lock).unlink()
    lines.clear()
    run_study(plan, out, quiet=True, log=lines.append)  # released: this process trains it now
    assert (busy / "summary.json").is_file() and (busy / "eval-last-k3.json").is_file()
    assert lines[-1].endswith("2 of 2 runs finished in " + str(out))
    assert not (busy / RunDir.STUDY_LOCK).exists() and not (out / "none_seed0" / RunDir.STUDY_LOCK).exists()
