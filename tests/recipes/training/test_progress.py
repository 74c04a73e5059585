"""The tqdm progress bar and the per-epoch records of a run directory."""

import io
import json

import pytest

from envconv.recipes.training.progress import METRICS_COLUMNS, RunLog, progress_bar


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
