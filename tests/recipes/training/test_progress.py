"""The tqdm progress bar and the per-epoch records of a run directory."""

import io
import json

import pytest

from envconv.recipes.training.progress import METRICS_COLUMNS, Heartbeat, RunLog, progress_bar


def test_progress_bar_draws_only_when_enabled():
    out = io.StringIO()
    with progress_bar(10, "epoch 1/3", enabled=True, stream=out) as bar:
        bar.set_postfix(loss=0.25, refresh=False)
        bar.update(5)
        bar.refresh()
        assert "epoch 1/3:  50%" in out.getvalue() and "5/10" in out.getvalue() and "loss=0.25" in out.getvalue()
    silent = io.StringIO()
    with progress_bar(10, "x", enabled=False, stream=silent) as bar:
        bar.update(5)
    assert silent.getvalue() == ""


def test_without_a_terminal_a_heartbeat_line_comes_every_30_seconds():
    now = [0.0]
    out = io.StringIO()
    beat = Heartbeat(400, "epoch 2/10", stream=out, clock=lambda: now[0])
    for step in range(1, 401):
        now[0] = step * 0.25  # 4 steps/s: a line at 30 s (step 120), 60 s (240), 90 s (360)
        if step == 100:
            beat.set_postfix(loss=0.4567, err=12.5)
        beat.update(1)
    lines = out.getvalue().splitlines()
    assert lines == [
        "  epoch 2/10: step 120/400 (30%), 4.00 steps/s, 0m30s elapsed, ETA 1m10s, loss 0.4567, err 12.5",
        "  epoch 2/10: step 240/400 (60%), 4.00 steps/s, 1m00s elapsed, ETA 0m40s, loss 0.4567, err 12.5",
        "  epoch 2/10: step 360/400 (90%), 4.00 steps/s, 1m30s elapsed, ETA 0m10s, loss 0.4567, err 12.5"]
    assert isinstance(progress_bar(10, "x", enabled=False, heartbeat=True), Heartbeat)


def test_the_heartbeat_gives_the_whole_runs_eta_and_the_epoch_line_the_time_left():
    from envconv.recipes.training.trainer import _time_left

    now = [0.0]
    out = io.StringIO()
    beat = Heartbeat(400, "epoch 2/10", stream=out, clock=lambda: now[0], later_steps=8 * 400)
    for step in range(1, 121):
        now[0] = step * 0.25
        beat.update(1)
    # 280 steps of this epoch and 3,200 of the eight after it at 4 steps/s: 70 s and 870 s
    assert out.getvalue().splitlines() == [
        "  epoch 2/10: step 120/400 (30%), 4.00 steps/s, 0m30s elapsed, ETA 1m10s (run 14m30s)"]
    started = __import__("time").monotonic() - 120.0  # two epochs (3 and 4) took 120 s: 60 s each, 6 left
    assert _time_left(started, 4, 3, {"epochs": 10}) == ", about 6 min left"
    assert _time_left(started, 10, 3, {"epochs": 10}) == ""


def test_training_without_a_terminal_prints_heartbeats(tmp_path, capsys, monkeypatch):
    from envconv.recipes.training import progress
    from envconv.recipes.training.trainer import train
    from run_helpers import tiny_config

    monkeypatch.setattr(progress.Heartbeat, "EVERY", 0.0)
    train(tiny_config(tmp_path / "run", train={"epochs": 1}))  # progress "off": no bar, heartbeats every step
    out = capsys.readouterr().out
    assert "  epoch 1/1: step 1/8 (12%)" in out and "  epoch 1/1: step 8/8 (100%)" in out
    assert "  eval: step 2/2 (100%)" in out


def test_run_log_appends_and_truncates(tmp_path):
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    for epoch in (1, 2, 3):
        log.log_epoch({"epoch": epoch, "lr": 0.1 / epoch, "train_loss": 1.0 / epoch, "val_top1_err": None},
                      {"conv1": [0.5 * epoch]})
    rows = log.rows()
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and list(rows[0]) == list(METRICS_COLUMNS)
    assert rows[2]["lr"] == "0.0333333" and rows[0]["val_top1_err"] == ""
    log.truncate(1)  # a resume from epoch 1 repeats epochs 2 and 3
    assert [r["epoch"] for r in log.rows()] == ["1"]
    assert json.loads((tmp_path / "sigma.json").read_text()) == [{"epoch": 1, "sigma": {"conv1": [0.5]}}]
    RunLog(tmp_path / "other", enabled=False).log_epoch({"epoch": 1}, {})
    assert not (tmp_path / "other").exists()  # processes other than rank 0 write nothing


def test_tensorboard_scalars_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path, enabled=True, tensorboard=True)
    log.log_epoch({"epoch": 1, "lr": 0.1, "train_loss": 2.5, "val_top1_err": 40.0}, {"conv1": [1.0, 2.0]})
    log.log_epoch({"epoch": 2, "lr": 0.05, "train_loss": 1.5, "val_top1_err": 30.0}, {"conv1": [2.0, 4.0]})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 1.5)]
    assert [e.value for e in events.Scalars("val/top1_err")] == [40.0, 30.0]
    assert [e.value for e in events.Scalars("sigma_mean/conv1")] == [1.5, 3.0]
