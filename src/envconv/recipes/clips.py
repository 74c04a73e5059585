"""Moving clips: a small real-data task where time and space want different receptive fields.

Each clip shows one Fashion-MNIST garment (downsampled to 14 x 14) drifting across a 24 x 24
canvas, one pixel per frame in a random direction, for 8 frames; every pixel of every frame
gets independent Gaussian noise. The label is the garment's class. Averaging over time removes
noise without blurring the garment much (it moves slowly), averaging over space blurs its
detail: a learned envelope with a sigma per axis (time, height, width) can widen the time axis
alone, a sigma per channel cannot.

A small 3-D CNN (:func:`clip_net`) is trained with three variants at the paper's places (the
stem and the strided convolutions, :func:`envconv.disentangle`): ``none`` (the plain net),
``gaussian`` (one sigma per channel) and ``gaussian-per-axis`` (``sigma_per_axis=True``), over
several seeds. ``envconv clips`` runs them (resumable: finished runs are kept in
``results.json``, written atomically after each) and ``--report`` writes the Markdown report
with paired t intervals and the learned sigmas per axis, and its figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import disentangle
from ..envelope import GaussianEnvelope
from ..state_dict import atomic_write_bytes
from .arguments import non_negative_float, non_negative_int, positive_int
from .data import FASHION_MNIST_ROOT, FashionMNIST
from .rundir import hold_lock, try_lock
from .study.stats import paired_difference, summarize
from .training.optim import parameter_groups

__all__ = ["VARIANTS", "make_clips", "clip_net", "train_variant", "run_clips", "report", "add_arguments", "main"]

#: The compared variants and their :func:`envconv.disentangle` options (``None`` is the plain net).
VARIANTS = {"none": None, "gaussian": {}, "gaussian-per-axis": {"sigma_per_axis": True}}
AXES = ("time", "height", "width")
FRAMES, CANVAS, GARMENT = 8, 24, 14


def make_clips(images: torch.Tensor, seed: int, noise: float = 0.8, frames: int = FRAMES) -> torch.Tensor:
    """Clips (N, 1, frames, 24, 24) of ``images`` (N, 28, 28 in [0, 1]) drifting one pixel per frame, plus noise.

    Each clip's start, direction (one of the 8 neighbours) and noise come from ``seed`` and
    its index, so a split is the same clips every time.
    """
    gen = torch.Generator().manual_seed(seed)
    garments = F.avg_pool2d(images.float().unsqueeze(1), 2)[:, 0]  # 28 -> 14
    n = len(images)
    directions = torch.tensor([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    direction = directions[torch.randint(len(directions), (n,), generator=gen)]
    room = CANVAS - GARMENT - (frames - 1)  # the start positions from which the path stays on the canvas
    start = torch.randint(room + 1, (n, 2), generator=gen) + torch.where(direction < 0, frames - 1, 0)
    clips = torch.zeros(n, 1, frames, CANVAS, CANVAS)
    for t in range(frames):
        pos = start + t * direction
        for i in range(n):
            y, x = int(pos[i, 0]), int(pos[i, 1])
            clips[i, 0, t, y:y + GARMENT, x:x + GARMENT] = garments[i]
    return clips + noise * torch.randn(clips.shape, generator=gen)


def clip_net(num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """A small 3-D CNN for (N, 1, 8, 24, 24) clips: a stem, two strided stages, a linear head."""
    def block(cin, cout, stride):
        return [nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                nn.ReLU(inplace=True)]

    return nn.Sequential(*block(1, width, 1), *block(width, 2 * width, 2), *block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


def _model(variant: str) -> nn.Module:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    model = clip_net()
    if VARIANTS[variant] is not None:
        disentangle(model, **VARIANTS[variant])
    return model


def _axis_sigmas(model: nn.Module) -> Dict[str, List[float]]:
    """Per envelope, its mean sigma along time, height and width."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, GaussianEnvelope):
            sigma = m.sigma.detach().double()
            out[name] = (sigma.mean(0) if m.per_axis else sigma.mean().repeat(3)).tolist()
    return out


def train_variant(variant: str, seed: int, train: tuple, test: tuple, *, epochs: int = 4, batch_size: int = 64,
                  lr: float = 0.05, log=print) -> dict:
    """Train one variant from ``seed`` on ``train`` = (clips, labels); returns its test accuracy and sigmas."""
    torch.manual_seed(seed)
    model = _model(variant)
    groups = parameter_groups(model, 5e-4, sigma_weight_decay=False, norm_weight_decay=False)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    steps = epochs * ((len(train[0]) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order, start, total = torch.randperm(len(train[0]), generator=gen), time.monotonic(), 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(train[0][idx]), train[1][idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        log(f"  {variant} seed {seed} epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} "
            f"({time.monotonic() - start:.0f} s)")
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(test[0][i:i + 256]).argmax(1) == test[1][i:i + 256]).sum())
                      for i in range(0, len(test[0]), 256))
    return {"variant": variant, "seed": seed, "epochs": epochs, "accuracy": 100.0 * correct / len(test[0]),
            "sigmas": _axis_sigmas(model)}


def _read_results(path: Path, setup: dict) -> dict:
    results = json.loads(path.read_text()) if path.exists() else {"setup": setup, "runs": []}
    if results["setup"] != setup:
        raise ValueError(f"{path} holds runs of another setup ({results['setup']}); this one is {setup}: "
                         f"give another --out")
    return results


def _split(data, split: str, count: int, seed: int, noise: float) -> tuple:
    """The first ``count`` images of a Fashion-MNIST split as clips (all of them used: never fewer than asked)."""
    images = FashionMNIST(data, split)
    if not 1 <= count <= len(images.targets):
        raise ValueError(f"--{split}-count must be 1 to {len(images.targets)} (the {split} split's images), got "
                         f"{count}")
    return make_clips(images.images[:count] / 255.0, seed=seed, noise=noise), images.targets[:count]


def run_clips(data: Optional[os.PathLike], out: os.PathLike, seeds: Sequence[int] = (0, 1, 2), *,
              variants: Sequence[str] = tuple(VARIANTS), epochs: int = 6, train_count: int = 3000,
              test_count: int = 1000, noise: float = 0.8, log=print) -> List[dict]:
    """Run every (variant, seed) not yet in ``out/results.json``; returns all results.

    Several processes may share ``out`` (e.g. one per seed): each run is claimed by a lock while
    it trains, and results.json is read and rewritten under a lock, so no finished run is lost.
    """
    if not (math.isfinite(noise) and noise >= 0) or epochs < 1:
        raise ValueError(f"noise must be a finite number of at least 0 and epochs positive, got {noise!r}, {epochs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    setup = {"epochs": epochs, "train_count": train_count, "test_count": test_count, "noise": noise,
             "frames": FRAMES, "canvas": CANVAS}
    with hold_lock(out / ".results-mutex"):
        _read_results(path, setup)
    train, test = _split(data, "train", train_count, 1, noise), _split(data, "test", test_count, 2, noise)
    for seed in seeds:
        for variant in variants:
            with try_lock(out / f".claim-{variant}-seed{seed}") as mine:
                with hold_lock(out / ".results-mutex"):
                    done = {(r["variant"], r["seed"]) for r in _read_results(path, setup)["runs"]}
                if (variant, seed) in done:
                    continue
                if not mine:
                    log(f"{variant}, seed {seed}: training in another process, skipped")
                    continue
                log(f"{variant}, seed {seed}:")
                row = train_variant(variant, seed, train, test, epochs=epochs, log=log)
                log(f"  test accuracy {row['accuracy']:.2f}%")
                with hold_lock(out / ".results-mutex"):
                    results = _read_results(path, setup)
                    results["runs"].append(row)
                    atomic_write_bytes((json.dumps(results, indent=1) + "\n").encode(), path)
    with hold_lock(out / ".results-mutex"):
        return _read_results(path, setup)["runs"]


def report(results: dict, figure: Optional[os.PathLike] = None) -> str:
    """The Markdown report of ``results.json``: accuracy per variant, paired differences, learned sigmas."""
    runs, setup = results["runs"], results["setup"]
    acc = {v: {r["seed"]: r["accuracy"] for r in runs if r["variant"] == v} for v in VARIANTS}
    lines = [f"Moving clips: {setup['train_count']} training and {setup['test_count']} test clips of "
             f"{setup['frames']} frames, {setup['canvas']} x {setup['canvas']}, noise sigma {setup['noise']}; "
             f"{setup['epochs']} epochs per run.", "",
             "| variant | runs | test accuracy (%) mean | std |", "|---|---|---|---|"]
    for v in VARIANTS:
        s = summarize(list(acc[v].values()))
        if s is not None:
            std = "-" if s.std is None else f"{s.std:.2f}"
            lines.append(f"| {v} | {s.n} | {s.mean:.2f} | {std} |")
    lines += ["", "Paired differences of test accuracy (percentage points, mean and 95% t interval over seeds):", ""]
    for a, b in (("gaussian-per-axis", "gaussian"), ("gaussian", "none"), ("gaussian-per-axis", "none")):
        d = paired_difference(acc[a], acc[b])
        if d is not None:
            lines.append(f"- {a} - {b}: {d}")
    lines += ["", "Learned sigma, mean over channels and seeds (time / height / width), at the stem (layer 0) and "
              "the two strided convolutions (layers 3 and 6) of the net:", "",
              "| layer | gaussian | gaussian-per-axis |", "|---|---|---|"]
    layers = {name for r in runs for name in r["sigmas"]}
    for name in sorted(layers):
        cells = []
        for v in ("gaussian", "gaussian-per-axis"):
            rows = [r["sigmas"][name] for r in runs if r["variant"] == v and name in r["sigmas"]]
            mean = [sum(x[a] for x in rows) / len(rows) for a in range(3)] if rows else None
            cells.append("-" if mean is None else (f"{mean[0]:.3f}" if v == "gaussian"
                                                   else " / ".join(f"{m:.3f}" for m in mean)))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    if figure is not None:
        _plot(runs, figure)
        _plot_envelopes(runs, envelope_figure(figure))
    return "\n".join(lines) + "\n"


def envelope_figure(figure: os.PathLike) -> Path:
    """Where :func:`report` draws the stem's learned envelopes, beside ``figure``."""
    figure = Path(figure)
    return figure.with_name(figure.stem + "-envelope" + figure.suffix)


def _plot_envelopes(runs: List[dict], path: os.PathLike, layer: str = "0.envelope") -> None:
    """The stem's learned envelope in the (time, width) plane: one sigma per channel vs one per axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import kernels as EF

    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    for ax, variant in zip(axes, ("gaussian", "gaussian-per-axis")):
        rows = [r["sigmas"][layer] for r in runs if r["variant"] == variant and layer in r["sigmas"]]
        if not rows:
            ax.set_axis_off()
            continue
        sigma = [sum(x[a] for x in rows) / len(rows) for a in range(3)]
        time_k, width_k = (EF.gaussian_kernel1d(EF.raw_from_sigma([sigma[a]]), 9)[0].numpy() for a in (0, 2))
        ax.imshow(time_k[:, None] * width_k[None, :], cmap="viridis", vmin=0)
        ax.set_xlabel(f"width (sigma {sigma[2]:.2f})")
        ax.set_ylabel(f"time (sigma {sigma[0]:.2f})")
        ax.set_title(variant, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("the stem's learned envelope, 9 x 9 taps, mean over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _plot(runs: List[dict], path: os.PathLike) -> None:
    """Per layer, the per-axis variant's learned time sigma against its height and width sigmas, every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in runs if r["variant"] == "gaussian-per-axis"]
    layers = sorted({name for r in rows for name in r["sigmas"]})
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, name in enumerate(layers):
        for j, axis in enumerate(AXES):
            values = [r["sigmas"][name][j] for r in rows]
            ax.scatter([i + (j - 1) * 0.22] * len(values), values, s=18, color=f"C{j}",
                       label=axis if i == 0 else None)
    ax.axhline(math.sqrt(math.log(2.0)), color="grey", lw=0.6, ls=":")  # raw sigma 0: the initial sigma
    ax.set_xticks(range(len(layers)), [f"{n.removesuffix('.envelope')}: {'stem' if i == 0 else 'strided conv'}"
                                       for i, n in enumerate(layers)])
    ax.set_ylabel("learned sigma (mean over channels)")
    ax.set_title("sigma per axis learned on moving clips (dotted: the initial 0.833)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv clips``' arguments to ``parser``."""
    parser.add_argument("--data", default=None, help=f"Fashion-MNIST folder (default: {FASHION_MNIST_ROOT})")
    parser.add_argument("--out", required=True, help="folder of results.json (runs already there are kept)")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--epochs", type=positive_int, default=6, help="epochs per run (default: 6)")
    parser.add_argument("--noise", type=non_negative_float, default=0.8,
                        help="noise sigma per pixel and frame (default: 0.8)")
    parser.add_argument("--train-count", type=positive_int, default=3000, help="training clips (default: 3000)")
    parser.add_argument("--test-count", type=positive_int, default=1000, help="test clips (default: 1000)")
    parser.add_argument("--report", metavar="MARKDOWN", default=None,
                        help="write the report of results.json here (and its two figures, .png and -envelope.png, "
                             "beside it) instead of training")
    return parser


def main(args: argparse.Namespace) -> int:
    """Train a 3-D CNN on moving Fashion-MNIST clips without envelopes, with a sigma per channel and per axis."""
    if args.report:
        path = Path(args.out) / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: run `envconv clips --out {args.out}` first")
        target = Path(args.report)
        text = report(json.loads(path.read_text()), figure=target.with_suffix(".png"))
        target.write_text(text)
        print(text)
        return 0
    run_clips(args.data, args.out, args.seeds, epochs=args.epochs, train_count=args.train_count,
              test_count=args.test_count, noise=args.noise)
    return 0
