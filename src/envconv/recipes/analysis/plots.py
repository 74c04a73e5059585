"""Figures for the analysis report. Each function takes data and returns a matplotlib figure (Agg backend).

matplotlib is an optional dependency (``pip install 'envconv[analysis]'``).
"""

from __future__ import annotations

import textwrap
from typing import Dict, List, Optional, Sequence

import numpy as np

from ...listing import EnvelopeInfo
from .kernel_images import envelope_kernel2d

__all__ = ["pyplot", "plot_sigmas", "plot_envelopes", "plot_history", "plot_sigma_history", "plot_gradcam",
           "plot_erf"]

_PATH_COLOURS = {"stem": "C3", "residual": "C0", "identity": "C2"}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or a clear ImportError."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the analysis plots need matplotlib: pip install 'envconv[analysis]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sigmas(layers: Sequence[EnvelopeInfo], title: str = ""):
    """Fig. 4a: one dot per channel's sigma, a column per layer, coloured by path; mean and max marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(layers) + 1.5), 3.6))
    rng = np.random.default_rng(0)
    for i, layer in enumerate(layers):
        s = np.asarray(layer.sigmas)
        ax.scatter(i + rng.uniform(-0.18, 0.18, s.size), s, s=8, alpha=0.6, color=_PATH_COLOURS[layer.path],
                   label=layer.path, zorder=3)  # above the mean bar (a stem has one channel)
        ax.plot([i - 0.3, i + 0.3], [s.mean()] * 2, color="k", linewidth=2, label="mean")
        ax.plot([i], [s.max()], marker="v", color="k", markersize=6, label="max")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([layer.name for layer in layers], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("learned sigma (pixels)")
    ax.set_title(title or "sigma per channel (Fig. 4a)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_envelopes(layers: Sequence[EnvelopeInfo]):
    """Fig. 4b: the 2-D envelope of the mean-sigma and of the max-sigma channel of each layer."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(layers), figsize=(1.6 * len(layers) + 0.4, 3.6), squeeze=False)
    for j, layer in enumerate(layers):
        for i, (what, sigma) in enumerate((("mean", layer.sigma_mean), ("max", layer.sigma_max))):
            ax = axes[i, j]
            ax.imshow(envelope_kernel2d(float(sigma), layer.size), cmap="viridis", vmin=0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{layer.name}\n{what} σ={sigma:.2f}" if i == 0 else f"{what} σ={sigma:.2f}", fontsize=7)
    fig.suptitle(f"envelopes g(x, y; σ) at k_g = {layers[0].size} (colour: weight)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_history(rows: List[Dict[str, str]]):
    """Loss, top-1 error (train / validation) and learning rate per epoch, from ``metrics.csv`` rows."""
    plt = pyplot()

    def column(key):
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])

    epochs = column("epoch")
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    axes[0].plot(epochs, column("train_loss"), "o-", label="train")
    axes[0].plot(epochs, column("val_loss"), "s-", label="validation")
    axes[0].set_title("loss", fontsize=9)
    axes[1].plot(epochs, column("train_top1_err"), "o-", label="train")
    axes[1].plot(epochs, column("val_top1_err"), "s-", label="validation")
    axes[1].set_title("top-1 error (%)", fontsize=9)
    axes[2].plot(epochs, column("lr"), "o-")
    axes[2].set_title("learning rate", fontsize=9)
    for ax in axes:
        _epoch_axis(ax)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _epoch_axis(ax) -> None:
    """An x axis of whole epochs (a 2-epoch run got ticks at 1.25, 1.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_sigma_history(records: List[Dict]):
    """Per layer, sigma mean (line) and min..max (band) over epochs, from ``sigma.json`` records (epoch 0: initial)."""
    plt = pyplot()
    layers = list(records[0]["sigma"])
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, name in enumerate(layers):
        values = [np.asarray(r["sigma"][name]) for r in records]
        mean = [v.mean() for v in values]
        ax.plot(epochs, mean, "o-", color=f"C{i}", label=name, markersize=3)
        ax.fill_between(epochs, [v.min() for v in values], [v.max() for v in values], color=f"C{i}", alpha=0.15)
    _epoch_axis(ax)
    ax.set_ylabel("sigma")
    ax.set_title("sigma per layer over training (line: mean; band: min..max)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def _grey(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> an (H, W) or (H, W, 3) image scaled to [0, 1] for display."""
    image = image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0]
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo + 1e-12)


def plot_gradcam(images: np.ndarray, maps: Dict[str, np.ndarray], labels: Sequence[int],
                 predictions: Dict[str, Sequence[int]], class_names: Optional[Sequence[str]] = None):
    """Fig. 6: each image with the GradCAM map of each model over it, true and predicted labels (red: wrong)."""
    plt = pyplot()
    names = list(maps)
    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(names), figsize=(2.0 * (1 + len(names)), 2.0 * n), squeeze=False)

    def cls(c):
        return class_names[c] if class_names is not None else str(c)

    for i in range(n):
        shown = _grey(images[i])
        axes[i, 0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        axes[i, 0].set_title(("image\n" if i == 0 else "") + f"true: {cls(labels[i])}", fontsize=7)
        for j, name in enumerate(names, 1):
            axes[i, j].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
            axes[i, j].imshow(maps[name][i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            right = predictions[name][i] == labels[i]
            axes[i, j].set_title(("\n".join(textwrap.wrap(name, 28)) + "\n" if i == 0 else "")
                                 + f"predicted: {cls(predictions[name][i])}", fontsize=7,
                                 color="k" if right else "C3")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_erf(maps: Dict[str, Dict[str, np.ndarray]], sides: Dict[str, Dict[str, Dict[str, int]]]):
    """ERF heatmaps, a row per model and a column per stage, on a log scale (display only).

    ``maps[model][stage]`` is the raw averaged map; ``sides[model][stage]`` its ``side(t)`` values.
    """
    plt = pyplot()
    models = list(maps)
    stages = list(maps[models[0]])
    fig, axes = plt.subplots(len(models), len(stages), figsize=(2.4 * len(stages), 2.5 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, stage in enumerate(stages):
            m = maps[model][stage]
            shown = np.log10(np.maximum(m / max(m.max(), 1e-30), 1e-4))
            axes[i, j].imshow(shown, cmap="magma", vmin=-4, vmax=0)
            s = sides[model][stage]
            axes[i, j].set_title(f"{model} {stage}\nside 20/50/99%: {s['0.2']}/{s['0.5']}/{s['0.99']}", fontsize=7)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.suptitle("effective receptive field, log10 of the map / its max (display only)", fontsize=9)
    fig.tight_layout()
    return fig
