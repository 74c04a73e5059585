"""RunDir: the run directory's files, its locks, forks and the envelopes read from its records."""

import math

import pytest

from envconv import envelopes
from envconv.recipes import rundir
from envconv.recipes.rundir import RunDir, RunInUseError, checkpoint_of, model_from_checkpoint
from envconv.recipes.training.trainer import train
from run_helpers import tiny_config


def test_file_names_of_a_run_and_of_its_evaluations(tmp_path):
    run = RunDir(tmp_path / "r")
    assert [p.name for p in (run.config_file, run.metrics_file, run.sigma_file, run.summary_file, run.last,
                             run.best)] == ["config.yaml", "metrics.csv", "sigma.json", "summary.json", "last.pt",
                                            "best.pt"]
    assert RunDir.eval_file(run.last).name == "eval-last.json"
    assert RunDir.eval_file(run.best, "auto").name == "eval-best-kauto.json"
    assert RunDir.eval_file(run.best, (3, 9, 9)).name == "eval-best-k3x9x9.json"
    assert RunDir.probe_file(run.last, "fashion_mnist").name == "probe-last.json"
    assert RunDir.of_config({"name": "x", "output": {"dir": str(tmp_path / "runs/{name}")}}).path == tmp_path / "runs/x"


def test_prepare_refuses_a_directory_holding_a_run_and_a_file(tmp_path):
    run = RunDir(tmp_path / "r")
    run.prepare(resume=False)
    assert run.path.is_dir()
    run.metrics_file.write_text("epoch\n")
    with pytest.raises(FileExistsError, match=r"already holds a run \(metrics.csv\); delete them"):
        run.prepare(resume=False)
    run.last.write_bytes(b"")
    with pytest.raises(FileExistsError, match="resume it with --resume"):
        run.prepare(resume=False)
    run.prepare(resume=True)
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        RunDir(tmp_path / "f").prepare(resume=False)


@pytest.mark.skipif(rundir.fcntl is None, reason="no file locks on this platform")
def test_the_lock_is_exclusive_and_an_empty_directory_is_removed(tmp_path):
    run = RunDir(tmp_path / "r")
    run.prepare(resume=False)
    with run.lock():
        with pytest.raises(RunInUseError, match="another envconv train holds"):
            with run.lock():
                pass
        with run.claim() as claimed:  # the study's claim is a different lock
            assert claimed
    assert not run.path.exists()  # nothing was written: the directory goes with the lock


def test_fork_copies_checkpoints_and_logs_and_refuses_a_run(tmp_path):
    source, target = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no last.pt"):
        source.fork(target)
    source.path.mkdir()
    for path in (source.config_file, source.last, source.metrics_file, source.lock_file):
        path.write_text(path.name)
    source.fork(target)
    assert sorted(p.name for p in target.path.iterdir()) == ["config.yaml", "last.pt", "metrics.csv"]
    with pytest.raises(FileExistsError, match="already holds a run"):
        source.fork(target)


def test_checkpoint_of_a_directory_without_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no last.pt or best.pt"):
        checkpoint_of(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run directory or checkpoint"):
        checkpoint_of(tmp_path / "missing")


def test_envelopes_of_a_run_directory_from_its_records_without_its_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, train={"epochs": 2, "lr": 0.8}), quiet=True)
    expected = envelopes(model_from_checkpoint(run / "last.pt")[0])
    for name in ("last.pt", "best.pt"):
        (run / name).unlink()
    rows = RunDir(run).envelopes()
    assert [(r.name, r.path, r.size) for r in rows] == [(r.name, r.path, r.size) for r in expected]
    for got, want in zip(rows, expected):
        assert got.sigmas == pytest.approx(want.sigmas, rel=1e-12)
    assert RunDir(run).envelopes(epoch=1)[0].sigmas != rows[0].sigmas  # the stem's sigma moved in epoch 2
    initial = RunDir(run).envelopes(initial=True)  # before training: sigma_init 0 -> sqrt(softplus(0)) everywhere
    assert [r.name for r in initial] == [r.name for r in rows]
    assert all(s == pytest.approx(math.sqrt(math.log(2)), rel=1e-12) for r in initial for s in r.sigmas)
    with pytest.raises(ValueError, match="no record of epoch 7"):
        RunDir(run).envelopes(epoch=7)
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        RunDir(tmp_path).envelopes()


def test_envelopes_of_a_run_with_a_sigma_per_axis_read_every_axis_from_the_records(tmp_path):
    # the per-axis sigmas came from a fresh model (0.8326 everywhere) beside the recorded per-channel ones
    run = tmp_path / "run"
    config = tiny_config(run, train={"epochs": 1, "lr": 0.8})
    config["model"]["options"]["sigma_per_axis"] = True
    train(config, quiet=True)
    expected = envelopes(model_from_checkpoint(run / "last.pt")[0])
    rows = RunDir(run).envelopes()
    assert all(r.axis_sigmas is not None for r in rows)
    for got, want in zip(rows, expected):
        for got_axis, want_axis in zip(got.axis_sigmas, want.axis_sigmas):
            assert got_axis == pytest.approx(want_axis, rel=1e-12)
    assert any(abs(s - 0.8326) > 1e-3 for r in rows for axis in r.axis_sigmas for s in axis)  # trained, not fresh


def test_read_json_takes_names_and_paths_also_for_a_relative_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir("results/study/x")  # relative, as a study's run directories are
    run.path.mkdir(parents=True)
    run.summary_file.write_text('{"a": 1}')
    RunDir.eval_file(run.last, 3).write_text('{"b": 2}')
    run.failed_file.write_text('{"c": 3}')
    assert run.read_json(run.summary_file) == {"a": 1}
    assert run.read_json(RunDir.eval_file(run.last, 3)) == {"b": 2}
    assert run.read_json(RunDir.FAILED) == {"c": 3}
    assert run.read_json(RunDir.RUN_INFO) is None
