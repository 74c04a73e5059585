"""envconv eval: the numbers equal a direct evaluation; --envelope-size shrinks; JSON is written."""

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from envconv.convert import shrink
from envconv.recipes.cli import main
from envconv.recipes.data import build_dataset
from envconv.recipes.rundir import model_from_checkpoint
from envconv.recipes.training.evaluation import evaluate_checkpoint
from envconv.recipes.training.trainer import train
from run_helpers import tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_config(run, train={"epochs": 2, "lr": 0.8}), quiet=True)
    return run / "last.pt"


def _direct(checkpoint, size):
    """Loss and top-1 error by hand: the whole validation set in one batch."""
    model, ckpt = model_from_checkpoint(checkpoint)
    if size is not None:
        shrink(model, size)
    data = build_dataset(ckpt["config"]["data"], "val", 1, 4)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        logits = model(x)
    return F.cross_entropy(logits, y).item(), 100 * (logits.argmax(1) != y).double().mean().item()


@pytest.mark.parametrize("size", [None, 3])
def test_eval_equals_a_direct_evaluation(checkpoint, size):
    result = evaluate_checkpoint(checkpoint, envelope_size=size, batch_size=7, workers=0)
    loss, top1 = _direct(checkpoint, size)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["top1_err"] == pytest.approx(top1)
    assert result["images"] == 64 and result["epoch"] == 2
    assert set(result["envelope_sizes"].values()) == {9 if size is None else 3}


def _auto_size(raw_sigma, size=9, eps=1e-2):
    """By hand: the smallest odd size whose central taps hold 1 - eps of the widest channel's 2-D envelope."""
    sigma2 = np.log1p(np.exp(raw_sigma.double().numpy().max()))
    x = np.arange(size) - size // 2
    g = np.exp(-x ** 2 / (2 * sigma2))
    g /= g.sum()
    return next(s for s in range(1, size + 1, 2) if g[size // 2 - s // 2: size // 2 + s // 2 + 1].sum() ** 2 >= 1 - eps)


def test_shrinking_changes_the_outputs_and_sizes_follow_the_stored_sigmas(checkpoint):
    stored = checkpoint.read_bytes()
    full = evaluate_checkpoint(checkpoint, workers=0)
    small = evaluate_checkpoint(checkpoint, envelope_size=3, workers=0)
    assert small["loss"] != full["loss"]  # a 3-tap envelope is a different (truncated) filter
    auto = evaluate_checkpoint(checkpoint, envelope_size="auto", eps=1e-2, workers=0)
    state = torch.load(checkpoint, weights_only=True)["model"]
    expected = {key.removesuffix(".envelope.raw_sigma"): _auto_size(value)
                for key, value in state.items() if key.endswith("raw_sigma")}
    assert auto["envelope_sizes"] == expected and len(expected) == 5
    assert checkpoint.read_bytes() == stored  # evaluating shrunk envelopes leaves the stored sigmas alone


def test_eval_command_prints_and_writes_json(checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--envelope-size", "3", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    written = json.loads((checkpoint.parent / "eval-last-k3.json").read_text())
    assert re.search(rf"top-1 error +{written['top1_err']:.2f}%", out) and re.search(r"envelope sizes +3\n", out)
    assert re.search(r"BatchNorm statistics +as trained", out)
    assert written["top1_err"] == pytest.approx(_direct(checkpoint, 3)[1])
    # a size per axis: 3 taps along the height, 5 along the width
    assert main(["eval", "--checkpoint", str(checkpoint), "--envelope-size", "3x5", "--workers", "0"]) == 0
    written = json.loads((checkpoint.parent / "eval-last-k3x5.json").read_text())
    assert re.search(r"envelope sizes +\(3, 5\)", capsys.readouterr().out)
    assert set(map(tuple, written["envelope_sizes"].values())) == {(3, 5)}


def test_eval_errors(tmp_path, checkpoint, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(checkpoint.read_bytes()[:1000])  # truncated
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, bad)
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "not an envconv training checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--data does not apply to data.dataset='synthetic'"):
        evaluate_checkpoint(checkpoint, data=str(tmp_path))
    with pytest.raises(ValueError, match="odd"):
        evaluate_checkpoint(checkpoint, envelope_size=4)
    with pytest.raises(ValueError, match="for a 2-D envelope"):
        evaluate_checkpoint(checkpoint, envelope_size=(3, 3, 3))
    with pytest.raises(SystemExit) as usage:  # argparse's usage error
        main(["eval", "--checkpoint", str(checkpoint), "--envelope-size", "3xfive"])
    assert usage.value.code == 2 and "one per axis (3x9x9)" in capsys.readouterr().err


def _image_folder(root, colours, per_class=6):
    from PIL import Image

    for c, colour in enumerate(colours):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            shade = tuple(int(v * (0.6 + 0.08 * i)) for v in colour)
            Image.new("RGB", (36, 30), shade).save(root / f"class{c}/{i}.png")
    return root


def test_imagefolder_run_and_eval_on_another_folder(tmp_path):
    pytest.importorskip("torchvision")
    colours = ((250, 20, 20), (20, 20, 250))
    train_dir, val_dir = _image_folder(tmp_path / "train", colours), _image_folder(tmp_path / "val", colours)
    other = _image_folder(tmp_path / "other", colours[::-1])  # the same class names with swapped colours
    run = tmp_path / "run"
    train(tiny_config(run, model={"num_classes": 2, "in_chans": 3},
                      data={"dataset": "imagefolder", "train": str(train_dir), "val": str(val_dir),
                            "augment": "imagenet", "image_size": 24, "eval_resize": 28, "mean": [0.5] * 3,
                            "std": [0.25] * 3},
                      train={"epochs": 3, "batch_size": 4, "lr": 2.0, "step_size": 10}), quiet=True)
    same = evaluate_checkpoint(run / "last.pt", workers=0)
    swapped = evaluate_checkpoint(run / "last.pt", data=str(other), workers=0)
    assert same["images"] == swapped["images"] == 12
    assert same["top1_err"] < 25  # red vs blue is learnt (chance: 50%)
    assert swapped["top1_err"] > 75  # and --data really evaluates the other folder, colours swapped


def test_recalibrated_batchnorm_statistics_are_the_training_images_own(checkpoint, tmp_path, capsys):
    """--recalibrate-bn N: each BN layer's running mean / variance become the plain mean and (unbiased) variance of
    its inputs over the first N batches of the training images without augmentation; the error is then the
    direct evaluation of that model."""
    result = evaluate_checkpoint(checkpoint, recalibrate_bn=2, batch_size=16, workers=0)
    model, ckpt = model_from_checkpoint(checkpoint)
    config = ckpt["config"]
    train_set = build_dataset(dict(config["data"], augment="none"), "train", 1, 4)
    x = torch.stack([train_set[i][0] for i in range(32)])  # two batches of 16, in order
    inputs = {}
    bns = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for name, m in bns.items():
        m.register_forward_hook(lambda m, inp, out, name=name: inputs.__setitem__(name, inp[0]))
    model.train()  # batch statistics: every layer sees the inputs it sees during the recalibration
    stats = {name: [] for name in bns}
    for batch in (x[:16], x[16:]):
        with torch.no_grad():
            model(batch)
        for name in bns:
            a = inputs[name].double()
            stats[name].append((a.mean((0, 2, 3)), a.var((0, 2, 3), unbiased=True)))
    recalibrated, _ = model_from_checkpoint(checkpoint)
    from envconv.recipes.training.engine import recalibrate_batchnorm

    labels = torch.zeros(16, dtype=torch.long)
    assert recalibrate_batchnorm(recalibrated, [(x[:16], labels), (x[16:], labels), (x, labels)], batches=2) == 32
    for name, m in dict(recalibrated.named_modules()).items():
        if name in bns:
            mean = sum(s[0] for s in stats[name]) / 2
            var = sum(s[1] for s in stats[name]) / 2
            torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m.running_var.double(), var, rtol=1e-5, atol=1e-6)
    data = build_dataset(config["data"], "val", 1, 4)
    xv = torch.stack([data[i][0] for i in range(len(data))])
    yv = torch.tensor([data[i][1] for i in range(len(data))])
    recalibrated.eval()
    with torch.no_grad():
        top1 = 100 * (recalibrated(xv).argmax(1) != yv).double().mean().item()
    assert result["top1_err"] == pytest.approx(top1) and result["recalibrate_bn"] == 2
    assert main(["eval", "--checkpoint", str(checkpoint), "--recalibrate-bn", "2", "--batch-size", "16",
                 "--workers", "0"]) == 0
    assert re.search(r"BatchNorm statistics +recomputed over 2 training batches", capsys.readouterr().out)
    assert json.loads((checkpoint.parent / "eval-last-bn2.json").read_text())["top1_err"] == pytest.approx(top1)
