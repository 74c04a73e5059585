"""The envconv command line."""

import math
import re
import subprocess
import sys

import pytest
import torch
import yaml

import envconv
from envconv import DisentangledConv2d
from envconv.recipes.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"envconv {envconv.__version__}"


def test_sigma_demo_prints_progress_and_final_error(capsys):
    assert main(["sigma-demo", "--sigma", "1.3", "--steps", "200", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\d\.\d+e", line)]
    assert [int(r[0]) for r in rows] == [1] + list(range(20, 201, 20))
    final = re.search(r"max relative sigma error (\S+)%", out)
    assert final and float(final.group(1)) < 2.0
    assert float(rows[-1][2]) == pytest.approx(1.3, rel=0.02)


def test_envelopes_summary(tmp_path, capsys):
    layer = DisentangledConv2d(3, 4, 3)
    with torch.no_grad():
        layer.envelope.raw_sigma.copy_(torch.tensor([0.0, 1.0, 2.0]))
    path = tmp_path / "model.pt"
    layer.envelope_size = 5
    state = torch.nn.Sequential(layer).state_dict()
    torch.save({"model": state}, path)
    assert main(["envelopes", str(path)]) == 0
    title, *out = capsys.readouterr().out.splitlines()
    assert title == f"{path}: a state dict"
    assert out[0].split() == ["layer", "path", "channels", "k_g", "sigma", "mean", "min", "max"]
    sig = [math.sqrt(math.log1p(math.exp(v))) for v in (0.0, 1.0, 2.0)]
    assert out[1].split() == ["0", "stem", "3", "5", f"{sum(sig) / 3:.4f}", f"{sig[0]:.4f}", f"{sig[2]:.4f}"]
    # a state dict stripped of its records: refused, naming the missing one
    torch.save({k: v for k, v in state.items() if not k.endswith("_extra_state")}, path)
    assert main(["envelopes", str(path)]) == 2
    assert "but not its record 0.envelope._extra_state" in capsys.readouterr().err


def test_envelopes_errors_are_clear(tmp_path, capsys):
    assert main(["envelopes", str(tmp_path / "missing.pt")]) == 2
    assert "no run directory or checkpoint" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_text("garbage")
    assert main(["envelopes", str(tmp_path / "bad.pt")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "envconv", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"envconv {envconv.__version__}"


def test_methods_table_counts_parameters_on_the_model(capsys):
    assert main(["methods", "--model", "small_resnet20"]) == 0
    rows = [re.match(r"^(\S+)\s+.*?\s{2,}(\d+)\s+([\d,]+)\s\s", line) for line in capsys.readouterr().out.splitlines()]
    table = {m.group(1): (int(m.group(2)), int(m.group(3).replace(",", ""))) for m in rows if m}
    assert len(table) == len(envconv.METHODS)
    channels = 3 + 16 + 16 + 32 + 32  # envelope inputs of the five converted layers
    assert table["gaussian"] == (5, channels) and table["none"] == (0, 0) and table["cbs"] == (5, 0)
    assert table["dw"] == (5, 2 * 9 * channels) and table["param-attention"] == (5, 81 * channels)
    assert table["proj"] == (5, 16 + 32 + 32 + 64 + 64)  # one weight per output channel


def test_methods_unknown_model_is_a_clear_error(capsys):
    assert main(["methods", "--model", "not_a_model"]) == 2
    assert "unknown model 'not_a_model'" in capsys.readouterr().err


def test_envelopes_of_a_model_name_and_of_a_run_directory(tmp_path, capsys):
    from envconv.recipes.rundir import model_from_checkpoint
    from envconv.recipes.training.trainer import train
    from run_helpers import tiny_config

    assert main(["envelopes", "--model", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "25,559,723 parameters" in out  # torchvision's 25,557,032 + 2,691 sigmas (7 envelopes)
    assert re.search(r"layer2\.0\.downsample\.0\s+identity\s+256\s+9\s+0\.8326", out)
    run = tmp_path / "run"
    train(tiny_config(run, train={"epochs": 1}), quiet=True)
    assert main(["envelopes", str(run)]) == 0
    out = capsys.readouterr().out
    model, _ = model_from_checkpoint(run / "last.pt")
    stem = model.conv1.envelope.sigma.item()
    assert "epoch 1" in out and re.search(rf"conv1\s+stem\s+1\s+9\s+{stem:.4f}", out)


@pytest.mark.parametrize("override, key", [
    ("train.nesterov=maybe", "train.nesterov"), ("train.momentum=5", "train.momentum"),
    ("train.seed=abc", "train.seed"), ("data.mean=0.5", "data.mean"), ("output.dir=runs/{foo}", "output.dir"),
    ("train.label_smoothing=2", "train.label_smoothing"), ("model.num_classes=0", "model.num_classes"),
    ("data.image_size=100000", "data.image_size"), ("train.epochs=0", "train.epochs"),
    ("data.workers=-1", "data.workers"), ("train.gamma=0", "train.gamma"),
    ("data.synthetic_size=[0]", "data.synthetic_size"),
])
def test_bad_set_values_exit_2_naming_the_key(override, key, capsys, tmp_path):
    code = main(["train", "--config", "fashion_mnist_resnet20", "--set", f"output.dir={tmp_path / 'run'}",
                 "--set", override])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_bad_config_files_and_plans_exit_2_naming_the_file(tmp_path, capsys):
    listed = tmp_path / "listed.yaml"
    listed.write_text("base: [a.yaml, b.yaml]\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"train:\n  lr: \xff\xfe\n")
    for path, message in ((listed, "base must name one config file"), (binary, "is not UTF-8 text")):
        assert main(["train", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(path.name) in err
    plan = tmp_path / "plan.yaml"
    for text, message in (("base: fashion_mnist_resnet20\nseeds: [0]\nentries: 5\n", "entries must be a list"),
                          ("name: ../../x\nbase: fashion_mnist_resnet20\nseeds: [0]\nentries: []\n",
                           "name '../../x' must be")):
        plan.write_text(text)
        assert main(["study", str(plan), "--dry-run"]) == 2
        assert message in capsys.readouterr().err


def test_an_eval_batch_of_zero_and_an_output_dir_under_a_file_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # refused by the argument parser, before any file is read
        main(["eval", "--checkpoint", str(tmp_path / "x.pt"), "--batch-size", "0"])
    assert stop.value.code == 2
    assert "argument --batch-size: expected a positive whole number, got '0'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train", "--config", "fashion_mnist_resnet20", "--set", f"output.dir={tmp_path / 'file' / 'run'}",
                 "--set", "data.dataset=synthetic", "--set", "data.synthetic_size=[8, 8]"]) == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and "file" in err and "Traceback" not in err


def _train_args(tmp_path, run_dir, epochs=1):
    from run_helpers import tiny_config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "unused", train={"epochs": epochs})))
    return ["train", "--config", str(config), "--set", f"output.dir={run_dir}", "--quiet"]


def test_a_dangling_symlink_and_a_name_too_long_for_output_dir_are_one_line(tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    assert main(_train_args(tmp_path, link)) == 2
    err = capsys.readouterr().err
    assert f"output.dir {link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in err
    assert len(err.strip().splitlines()) == 1
    assert main(_train_args(tmp_path, tmp_path / ("x" * 300))) == 2
    err = capsys.readouterr().err
    assert "File name too long" in err and "x" * 300 in err and len(err.strip().splitlines()) == 1


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                                          monkeypatch):
    import errno
    import os

    run = tmp_path / "run"
    assert main(_train_args(tmp_path, run)) == 0
    before = (run / "last.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(run) in err and len(err.strip().splitlines()) == 1
    assert (run / "last.pt").read_bytes() == before and not list(run.glob("*.tmp-*"))


def test_a_read_only_run_directory_fails_before_the_evaluation(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    from envconv.recipes.training import evaluation

    run = tmp_path / "run"
    assert main(_train_args(tmp_path, run)) == 0

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran before the write check")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", never)
    assert main(["eval", "--checkpoint", str(run / "last.pt")]) == 2
    assert f"cannot write into {run}: Read-only file system" in capsys.readouterr().err
    assert main(["analyze", str(run)]) == 2
    assert "Read-only file system" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--quiet"]) == 2
    assert "Read-only file system" in capsys.readouterr().err
