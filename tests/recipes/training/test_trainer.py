"""The trainer: run-directory files, exact resume, interruption, non-finite loss, clear errors."""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from envconv.recipes.cli import main
from envconv.recipes.rundir import load_checkpoint, model_from_checkpoint
from envconv.recipes.training import engine, trainer
from envconv.recipes.training.engine import NonFiniteLossError
from envconv.recipes.training.progress import METRICS_COLUMNS
from envconv.recipes.training.trainer import train
from run_helpers import tiny_config


def _metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_writes_its_files(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(run), quiet=True)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.csv",
                                                     "sigma.json", "summary.json"]
    rows = _metrics(run)
    assert list(rows[0]) == list(METRICS_COLUMNS) and [r["epoch"] for r in rows] == ["1", "2"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1 * 32 / 256, 0.1 * 32 / 256 * 0.5])
    assert all(0 <= float(r["val_top1_err"]) <= 100 and float(r["images_per_s"]) > 0 for r in rows)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"] == yaml.safe_load((run / "config.yaml").read_text())
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "config"}
    model, _ = model_from_checkpoint(run / "last.pt")
    sigmas = json.loads((run / "sigma.json").read_text())
    assert [e["epoch"] for e in sigmas] == [1, 2]
    learned = model.get_submodule("layer2.0.conv1").envelope.sigma.tolist()
    assert sigmas[-1]["sigma"]["layer2.0.conv1"] == pytest.approx(learned, rel=1e-6)
    assert learned != pytest.approx([0.8326] * 16, abs=1e-4)  # sigma trained away from its start
    best = min(float(r["val_top1_err"]) for r in rows)
    assert summary["best_val_top1_err"] == pytest.approx(best, abs=1e-4)
    assert load_checkpoint(run / "best.pt")["best_val_top1_err"] == pytest.approx(best, abs=1e-4)
    assert json.loads((run / "summary.json").read_text())["final_val"]["top1_err"] == \
        pytest.approx(float(rows[-1]["val_top1_err"]), abs=1e-4)


def test_training_learns_the_synthetic_classes(tmp_path):
    summary = train(tiny_config(tmp_path / "r", train={"epochs": 4, "lr": 0.8, "step_size": 10},
                                data={"synthetic_size": [512, 128]}), quiet=True)
    assert float(_metrics(tmp_path / "r")[-1]["train_top1_err"]) < 10
    assert summary["best_val_top1_err"] < 25  # 4 classes: chance is 75% error


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("per_step", [False, True])
def test_resume_is_exact(tmp_path, per_step):
    # Augmentation on, BatchNorm, momentum, a schedule (per epoch or per step): all must continue exactly.
    sections = {"data": {"augment": "crop-flip", "crop_padding": 2}}
    schedule = {"schedule": "step", "step_size": 2, "gamma": 0.5, "schedule_per_step": per_step}
    train(tiny_config(tmp_path / "full", **sections, train={"epochs": 3, **schedule}), quiet=True)
    train(tiny_config(tmp_path / "part", **sections, train={"epochs": 1, **schedule}), quiet=True)
    assert main(["train", "--resume", str(tmp_path / "part"), "--set", "train.epochs=3", "--quiet"]) == 0
    full, part = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "part" / "last.pt")
    assert full.keys() == part.keys()
    for key in full:
        assert torch.equal(full[key], part[key]), key
    rows_full = [{k: r[k] for k in METRICS_COLUMNS if k not in ("seconds", "images_per_s")}
                 for r in _metrics(tmp_path / "full")]
    rows_part = [{k: r[k] for k in METRICS_COLUMNS if k not in ("seconds", "images_per_s")}
                 for r in _metrics(tmp_path / "part")]
    assert rows_full == rows_part


def test_interrupt_keeps_the_last_finished_checkpoint_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    train(tiny_config(tmp_path / "full"), quiet=True)
    real = engine.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(kwargs["epoch"])
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "cut"))
    assert "continue with `envconv train --resume" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    train(tiny_config(tmp_path / "cut"), resume=True, quiet=True)
    full, cut = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(full[k], cut[k]) for k in full)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                (signal.SIGHUP, 129, "stopped by SIGHUP")])
def test_ctrl_c_sigterm_and_sighup_on_the_command_line(tmp_path, signum, code, said):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", train={"epochs": 50})))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "envconv", "train", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # wait until epoch 1 is done, then press Ctrl-C
        if line.startswith("epoch 1/50"):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "continue with `envconv train --resume" in out and said in err and said.split()[0] in out
    epoch = load_checkpoint(tmp_path / "run" / "last.pt")["epoch"]
    assert epoch >= 1 and [int(r["epoch"]) for r in _metrics(tmp_path / "run")] == list(range(1, epoch + 1))
    assert not list((tmp_path / "run").glob("*.tmp-*"))  # no temporary file of a write left behind


def test_a_stop_during_a_checkpoint_write_removes_its_temporary_file_and_the_next_start_its_leftovers(
        tmp_path, monkeypatch):
    from envconv.recipes.signals import Terminated
    from envconv.state_dict import atomic_save

    target = tmp_path / "last.pt"
    atomic_save({"a": torch.zeros(2)}, target)

    def stopped(fd):
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(os, "fsync", stopped)
    with pytest.raises(Terminated):
        atomic_save({"a": torch.ones(2)}, target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.zeros(2))  # the old one, whole
    run = tmp_path / "run"
    train(tiny_config(run, train={"epochs": 1}), quiet=True)
    (run / "last.pt.tmp-999999999").write_bytes(b"left by a kill -9")  # no such process
    (run / f"sigma.json.tmp-{os.getppid()}").write_bytes(b"a live process's (the parent)")
    train(tiny_config(run, train={"epochs": 2}), resume=True, quiet=True)
    assert [p.name for p in run.glob("*.tmp-*")] == [f"sigma.json.tmp-{os.getppid()}"]


def test_one_run_directory_one_trainer(tmp_path):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "w") as held:  # another trainer holds the directory
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FileExistsError, match="is in use: another envconv train"):
            train(tiny_config(run, train={"epochs": 1}), quiet=True)
    train(tiny_config(run, train={"epochs": 1}), quiet=True)  # free again


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config(run, train={"epochs": 1}), quiet=True)
    before = (run / "last.pt").read_bytes()
    real = engine.train_one_epoch

    def poisoned(model, *args, **kwargs):  # the weights blow up in epoch 2
        with torch.no_grad():
            model.fc.weight.fill_(float("inf"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        train(tiny_config(run, train={"epochs": 2}), resume=True, quiet=True)
    assert (run / "last.pt").read_bytes() == before
    assert [r["epoch"] for r in _metrics(run)] == ["1"]


def test_resume_refuses_changes_the_checkpoint_cannot_honour(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, train={"epochs": 1}), quiet=True)
    with pytest.raises(ValueError, match="cannot change model.method, train.lr "):
        train(tiny_config(run, train={"epochs": 2, "lr": 0.5}, model={"method": "none"}), resume=True, quiet=True)
    cosine = tmp_path / "cos"
    train(tiny_config(cosine, train={"epochs": 1, "schedule": "cosine"}), quiet=True)
    with pytest.raises(ValueError, match="cosine schedule cannot change train.epochs"):
        train(tiny_config(cosine, train={"epochs": 2, "schedule": "cosine"}), resume=True, quiet=True)


def test_clear_errors(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, train={"epochs": 1}), quiet=True)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(tiny_config(run), quiet=True)
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        train(tiny_config(run), resume=True, quiet=True)
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    config = tmp_path / "fm.yaml"
    config.write_text(yaml.safe_dump({"base": "fashion_mnist_resnet20", "data": {"root": str(tmp_path / "no")},
                                      "output": {"dir": str(tmp_path / "fm")}}))
    assert main(["train", "--config", str(config)]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert main(["train", "--config", "fashion_mnist_resnet20", "--set", "train.lr=fast"]) == 2
    assert "train.lr must be a number >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(tiny_config(tmp_path / "amp", train={"amp": "fp16"}), quiet=True)


def test_global_batch_must_split_over_the_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.distributed, "setup", lambda device: trainer.distributed.DistributedContext(
        rank=0, world=2, local_rank=0, device=torch.device("cpu")))
    with pytest.raises(ValueError, match="batch_size=31 .* divisible by the 2 processes"):
        train(tiny_config(tmp_path / "odd", train={"batch_size": 31}), quiet=True)


def test_bf16_autocast_and_channels_last_train(tmp_path):
    summary = train(tiny_config(tmp_path / "r", train={"amp": "bf16", "channels_last": True, "epochs": 1}),
                    quiet=True)
    assert summary["final_val"]["images"] == 64 and summary["final_val"]["loss"] == summary["final_val"]["loss"]


def test_cbs_curriculum_follows_the_epoch(tmp_path):
    run = tmp_path / "cbs"
    train(tiny_config(run, model={"method": "cbs", "options": {"every": 1}}, train={"epochs": 3}), quiet=True)
    model, _ = model_from_checkpoint(run / "last.pt")
    from envconv.methods.cbs import CurriculumSmoothing

    sigmas = torch.cat([m.sigma.flatten() for m in model.modules() if isinstance(m, CurriculumSmoothing)])
    assert len(sigmas) and torch.allclose(sigmas, torch.tensor(0.9 ** 2))  # the last epoch (index 2) at 0.9^2


@pytest.mark.slow
def test_compiled_run_saves_the_plain_model(tmp_path):
    run = tmp_path / "compiled"
    train(tiny_config(run, train={"epochs": 1, "compile": True}), quiet=True)
    weights = load_checkpoint(run / "last.pt")["model"]
    assert not [k for k in weights if "_orig_mod" in k or k.startswith("module.")]
    model, _ = model_from_checkpoint(run / "last.pt")  # loads strictly into a fresh model
    assert model.conv1.envelope.raw_sigma.detach().abs().sum().item() > 0  # sigma trained under torch.compile


def test_a_run_directory_with_hash_colon_and_spaces_is_the_directory_resumed(tmp_path):
    odd = tmp_path / "exp #2: ünï"
    train(tiny_config(odd, train={"epochs": 1}), quiet=True)
    (tmp_path / "exp").mkdir()  # what "exp #2" would have become as a YAML value
    assert main(["train", "--resume", str(odd), "--set", "train.epochs=2", "--quiet"]) == 0
    assert load_checkpoint(odd / "last.pt")["epoch"] == 2 and not list((tmp_path / "exp").iterdir())
    config = trainer.config_from_args(trainer.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--config", str(odd / "config.yaml"), "--set", f"output.dir={tmp_path / 'my run #3'}"]))
    assert config["output"]["dir"] == str(tmp_path / "my run #3")


def test_resume_into_another_directory_forks_the_run(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", train={"epochs": 1}), quiet=True)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", f"output.dir={tmp_path / 'fork'}",
                 "--set", "train.epochs=2", "--quiet"]) == 0
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # the original is untouched
    assert load_checkpoint(tmp_path / "fork" / "last.pt")["epoch"] == 2
    assert len(_metrics(tmp_path / "fork")) == 2 and len(_metrics(tmp_path / "run")) == 1
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", f"output.dir={tmp_path / 'fork'}",
                 "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resuming_to_fewer_epochs_is_refused_and_keeps_the_record(tmp_path, capsys):
    train(tiny_config(tmp_path / "run", train={"epochs": 2}), quiet=True)
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "train.epochs=1", "--quiet"]) == 2
    assert "has trained 2 epochs; train.epochs=1 would train none" in capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").read_text() == summary


def test_amp_needs_float32(tmp_path):
    with pytest.raises(ValueError, match="train.amp=bf16 needs train.dtype=float32"):
        train(tiny_config(tmp_path / "run", train={"amp": "bf16", "dtype": "float64"}), quiet=True)


def test_a_nan_validation_loss_fails_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    train(tiny_config(tmp_path / "run", train={"epochs": 1}), quiet=True)
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("last.pt", "best.pt")}
    real = trainer.evaluate

    def nan_eval(*args, **kwargs):
        stats = real(*args, **kwargs)
        return type(stats)(float("nan"), float("nan"), float("nan"), stats.images, stats.seconds)

    monkeypatch.setattr(trainer, "evaluate", nan_eval)
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "train.epochs=2", "--quiet"]) == 2
    assert "validation loss is not finite in epoch 2" in capsys.readouterr().err
    assert {name: (tmp_path / "run" / name).read_bytes() for name in before} == before
    assert len(_metrics(tmp_path / "run")) == 1  # the NaN epoch is not recorded


def test_a_fresh_run_never_appends_to_another_runs_records(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,lr\n1,0.1\n")
    config = tiny_config(run, train={"epochs": 1})
    with pytest.raises(FileExistsError, match=r"already holds a run \(metrics.csv\); delete them to start afresh"):
        train(config, quiet=True)
    assert (run / "metrics.csv").read_text() == "epoch,lr\n1,0.1\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        train(tiny_config(tmp_path / "file", train={"epochs": 1}), quiet=True)


def test_an_empty_data_set_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="the training data set is empty"):
        train(tiny_config(tmp_path / "run", data={"synthetic_size": [0, 0]}), quiet=True)


def test_resuming_a_run_without_a_finished_epoch_says_how_to_start_afresh(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config(run)))  # as a Ctrl-C in epoch 1 leaves it
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "has no finished epoch to resume" in err and f"envconv train --config {run / 'config.yaml'}" in err
    assert main(["train", "--config", str(run / "config.yaml"), "--set", f"output.dir={run}", "--quiet",
                 "--set", "train.epochs=1"]) == 0


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        train(tiny_config(tmp_path / "run", data={"synthetic_size": [0, 0]}), quiet=True)
    assert not (tmp_path / "run").exists()


def test_a_compiled_run_says_that_its_first_steps_are_slow(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)  # the message, not the compile, is tested
    train(tiny_config(tmp_path / "run", train={"epochs": 1, "compile": True}))
    assert "torch.compile builds the model's kernels during the first steps" in capsys.readouterr().out


def test_recalibrated_batchnorm_statistics_are_the_checkpoints_and_its_validation(tmp_path):
    """train.recalibrate_bn: before each evaluation the BN statistics of the current weights over N batches of the
    training images (no augmentation) replace the running averages, in the checkpoint too, and the validation error
    is that model's; training itself (batch statistics) is the same as without."""
    from envconv.recipes.data import build_dataset, build_loader
    from envconv.recipes.training.engine import evaluate, recalibrate_batchnorm

    runs = {n: tmp_path / f"bn{n}" for n in (0, 3)}
    for n, run in runs.items():
        train(tiny_config(run, train={"recalibrate_bn": n, "epochs": 1}), quiet=True)
    saved, ckpt = model_from_checkpoint(runs[3] / "last.pt")
    plain, _ = model_from_checkpoint(runs[0] / "last.pt")
    for (name, a), b in zip(saved.state_dict().items(), plain.state_dict().values()):
        if "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(a, b, msg=name)  # the same weights: recalibration does not touch training
    config = ckpt["config"]
    train_set = build_dataset(dict(config["data"], augment="none"), "train", 1, 4)
    recalibrate_batchnorm(plain, build_loader(train_set, 32, train=False), 3)  # by hand on the plain run's weights
    bn = [name for name in plain.state_dict() if name.endswith("running_mean")]
    assert bn
    for name in bn + [n.replace("mean", "var") for n in bn]:
        torch.testing.assert_close(saved.state_dict()[name], plain.state_dict()[name], msg=name)
    assert not torch.allclose(saved.state_dict()[bn[-1]],
                              model_from_checkpoint(runs[0] / "last.pt")[0].state_dict()[bn[-1]])
    val = evaluate(saved, build_loader(build_dataset(config["data"], "val", 1, 4), 32, train=False),
                   device=torch.device("cpu"))
    summary = json.loads((runs[3] / "summary.json").read_text())
    assert summary["final_val"]["top1_err"] == pytest.approx(val.top1_err)
