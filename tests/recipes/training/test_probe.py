"""envconv probe: features before the classifier, a linear probe trained on them (Table 2 protocol)."""

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from envconv import create_model
from envconv.recipes.cli import main
from envconv.recipes.training.probe import classifier_of, extract_features, linear_probe, train_linear_probe
from envconv.recipes.training.trainer import train
from run_helpers import tiny_config


def test_features_are_the_pooled_features_before_the_classifier():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 28, 28)
    loader = DataLoader(TensorDataset(x, torch.arange(6)), batch_size=4)
    ours = create_model("small_resnet20", num_classes=10, in_chans=1).eval()
    feats, labels = extract_features(ours, loader, torch.device("cpu"))
    with torch.no_grad():
        expected = ours.forward_head(ours.forward_features(x), pre_logits=True)
    torch.testing.assert_close(feats, expected)
    assert labels.tolist() == list(range(6))
    tv = pytest.importorskip("torchvision")
    resnet = create_model("resnet18", num_classes=7, in_chans=1).eval()
    feats, _ = extract_features(resnet, loader, torch.device("cpu"))
    headless = copy.deepcopy(resnet)
    headless.fc = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(feats, headless(x))
    assert isinstance(resnet, tv.models.ResNet) and feats.shape == (6, 512)
    with pytest.raises(ValueError, match="no nn.Linear classifier"):
        classifier_of(nn.Conv2d(1, 1, 1))


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 3
    y = torch.arange(400) % 5
    x = centres[y] + torch.randn(400, 16, generator=g) * 0.3
    probe = train_linear_probe(x, y, 5, epochs=5, lr=0.1, batch_size=64)
    assert (probe(x).argmax(1) == y).all()
    again = train_linear_probe(x, y, 5, epochs=5, lr=0.1, batch_size=64)
    assert torch.equal(probe.weight, again.weight)  # seeded


def test_probe_command_on_fashion_mnist_files(tmp_path, fashion_root, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, model={"num_classes": 10}, data={"mean": [0.5], "std": [0.25]}, train={"epochs": 1}),
          quiet=True)
    before = torch.load(run / "last.pt", weights_only=True)["model"]
    assert main(["probe", "--checkpoint", str(run / "last.pt"), "--dataset", "fashion_mnist", "--train-data",
                 str(fashion_root), "--val-data", str(fashion_root), "--epochs", "100", "--lr", "1", "--workers",
                 "0"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "probe-last.json").read_text())
    assert (result["train_images"], result["val_images"], result["classes"], result["feature_dim"]) == (128, 64, 10, 64)
    assert f"{result['val']['top1_err']:6.2f}%" in out
    assert result["val"]["top1_err"] < 10  # the easy IDX classes are linearly separable in the features
    after = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the network stays frozen
    with pytest.raises(ValueError, match="same folder"):
        linear_probe(run / "last.pt", str(fashion_root), str(tmp_path), dataset="fashion_mnist")
    with pytest.raises(ValueError, match="needs the target task's training and validation data"):
        linear_probe(run / "last.pt", dataset="imagefolder")

    # digits: scikit-learn's 8x8 digits, no folders; the probe's features are those the hook takes
    pytest.importorskip("sklearn")
    assert main(["probe", "--checkpoint", str(run / "last.pt"), "--dataset", "digits", "--epochs", "5"]) == 0
    result = json.loads((run / "probe-last-digits.json").read_text())
    assert (result["train_images"], result["val_images"], result["classes"]) == (1200, 597, 10)
