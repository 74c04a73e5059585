"""envconv analyze on tiny checkpoints: every figure written and linked, clear errors."""

import json

import pytest

from envconv.recipes.cli import main
from envconv.recipes.training.trainer import train
from run_helpers import tiny_config

pytest.importorskip("matplotlib")
pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion_root):
    tmp = tmp_path_factory.mktemp("analyze")
    data = {"dataset": "fashion_mnist", "root": str(fashion_root), "mean": [0.5], "std": [0.25]}
    for method in ("gaussian", "none"):
        train(tiny_config(tmp / method, model={"num_classes": 10, "method": method}, data=data,
                          train={"epochs": 2}), quiet=True)
    return tmp


def test_analyze_writes_every_figure_and_links_it(runs, capsys):
    out = runs / "report"
    assert main(["analyze", str(runs / "gaussian"), "--compare", str(runs / "none" / "last.pt"), "--images", "3",
                 "--erf-images", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    import matplotlib.image

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["envelopes-model0.png", "erf.png", "gradcam.png", "history-model0.png", "history-model1.png",
                    "sigma-history-model0.png", "sigma-model0.png"]
    markdown, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for name in pngs:
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.02, name            # not blank
        assert f"]({name})" in markdown and f"src='{name}'" in html
    # figure sizes follow the content: 3 stages x 2 models of ERF maps, 3 images x (1 + 2 models) for GradCAM
    assert matplotlib.image.imread(out / "erf.png").shape[:2] == (500, 720)
    assert matplotlib.image.imread(out / "gradcam.png").shape[:2] == (600, 600)

    result = json.loads((out / "analysis.json").read_text())
    gaussian = result["models"]["tiny (A)"]
    assert [layer["path"] for layer in gaussian["layers"]] == ["stem", "residual", "identity", "residual", "identity"]
    assert result["models"]["tiny (B)"]["layers"] == []
    assert result["erf"]["input_size"] == 112 and set(result["erf"]["stages"]["tiny (A)"]) == {"layer1", "layer2",
                                                                                                 "layer3"}
    side = result["erf"]["stages"]["tiny (A)"]["layer3"]["side"]
    assert f"layer3 {side['0.2']}/{side['0.5']}/{side['0.99']}" in printed
    assert "tiny (B) has no Gaussian envelopes (model.method = none)" in markdown
    assert len(result["gradcam"]["labels"]) == 3


def test_a_model_without_envelopes_gets_a_report(runs):
    out = runs / "plain"
    assert main(["analyze", str(runs / "none"), "--images", "2", "--erf-images", "2", "--out", str(out)]) == 0
    assert "has no Gaussian envelopes" in (out / "report.md").read_text()
    assert not list(out.glob("sigma-*.png"))


def test_clear_errors(runs, tmp_path, capsys):
    assert main(["analyze", str(runs / "gaussian"), "--data", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "a")]) == 2
    assert "Fashion-MNIST folder" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nothing")]) == 2
    assert "no run directory or checkpoint" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    assert "holds no last.pt" in capsys.readouterr().err


def test_without_the_analysis_extra_the_error_names_it(runs, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)   # as if matplotlib were not installed
    assert main(["analyze", str(runs / "gaussian"), "--out", str(tmp_path / "a")]) == 2
    assert "pip install 'envconv[analysis]'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()                     # it fails before any work


def test_history_plots_tick_whole_epochs_and_the_sigma_history_starts_at_the_initial_value():
    pytest.importorskip("matplotlib")
    from envconv.recipes.analysis.plots import plot_history, plot_sigma_history

    rows = [{"epoch": "1", "train_loss": "1.0", "val_loss": "0.9", "train_top1_err": "30", "val_top1_err": "28",
             "lr": "0.1"}, {"epoch": "2", "train_loss": "0.8", "val_loss": "0.7", "train_top1_err": "25",
                            "val_top1_err": "24", "lr": "0.05"}]
    for ax in plot_history(rows).axes:  # a 2-epoch run had ticks at 1.2, 1.4, ...
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 2]
        assert ticks and all(float(t).is_integer() for t in ticks)
    records = [{"epoch": 0, "sigma": {"conv1": [0.8326]}}, {"epoch": 1, "sigma": {"conv1": [0.5]}},
               {"epoch": 2, "sigma": {"conv1": [0.3]}}]
    (line,) = plot_sigma_history(records).axes[0].get_lines()
    assert list(line.get_xdata()) == [0, 1, 2] and list(line.get_ydata()) == [0.8326, 0.5, 0.3]
