"""``envconv analyze``: one report of what a trained model's envelopes learned, optionally beside another model.

Writes ``OUT/report.md``, ``OUT/report.html`` (the PNGs sit beside them) and
``OUT/analysis.json`` (every number shown). Models are rebuilt from their checkpoints
(:func:`envconv.recipes.rundir.model_from_checkpoint`); the training loop is never imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from ...listing import EnvelopeInfo, envelopes
from ...state_dict import atomic_write_bytes
from ..data import build_dataset
from ..rundir import RunDir, checkpoint_of, model_from_checkpoint
from .document import Document
from .erf import effective_receptive_field, stage_names, tile_to_size
from .gradcam import gradcam_maps
from .kernel_images import envelope_row

__all__ = ["AnalysisTarget", "load_target", "analyze", "erf_summary", "ERF_SHARES"]

#: The shares t at which the ERF is summarised by side(t).
ERF_SHARES = (0.2, 0.5, 0.99)


@dataclass
class AnalysisTarget:
    """A model to analyse: its checkpoint, config, and run directory (None when it has no training records).

    Example:
        >>> target = load_target("runs/demo/gaussian")  # doctest: +SKIP
        >>> target.model, target.config["model"]["method"], target.run_dir  # doctest: +SKIP
    """

    name: str
    checkpoint: Path
    model: torch.nn.Module
    config: Dict[str, Any]
    epoch: int
    run_dir: Optional[RunDir]


def load_target(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> AnalysisTarget:
    """A run directory (its ``last.pt``, else ``best.pt``) or a checkpoint file, rebuilt in eval mode.

    Raises:
        FileNotFoundError: no such file, or a directory without a checkpoint.

    Example:
        >>> target = load_target("runs/demo/gaussian")  # doctest: +SKIP
        >>> target.name, target.epoch  # doctest: +SKIP
        ('demo-gaussian', 2)
    """
    path = checkpoint_of(path)
    model, ckpt = model_from_checkpoint(path, device)
    run_dir = RunDir(path.parent) if RunDir(path.parent).has_records() else None
    return AnalysisTarget(ckpt["config"].get("name", path.parent.name), path, model, ckpt["config"], ckpt["epoch"],
                          run_dir)


def _save(fig, out_dir: Path, name: str) -> str:
    from .plots import pyplot

    fig.savefig(out_dir / name, dpi=100)
    pyplot().close(fig)
    return name


def _pick(n_total: int, n: int) -> List[int]:
    """``n`` indices spread evenly over the dataset (a fixed, varied choice of images)."""
    return sorted({int(i) for i in np.linspace(0, n_total - 1, num=min(n, n_total))})


def _validation_data(target: AnalysisTarget, data: Optional[str]):
    from ..training.evaluation import data_config_for

    data_cfg = data_config_for(target.config, data, "val")
    return build_dataset(data_cfg, "val", target.config["model"]["in_chans"], target.config["model"]["num_classes"])


def _images(dataset, count: int):
    """``count`` images spread over ``dataset`` (without augmentation), their labels and the class names."""
    items = [dataset[i] for i in _pick(len(dataset), count)]
    return torch.stack([x for x, _ in items]), [int(y) for _, y in items], getattr(dataset, "classes", None)


def _sigma_section(doc: Document, target: AnalysisTarget, layers: List[EnvelopeInfo], out_dir: Path, tag: str) -> None:
    from .plots import plot_envelopes, plot_sigmas

    doc.heading(f"Sigma per layer: {target.name}")
    if not layers:
        doc.text(f"{target.name} has no Gaussian envelopes (model.method = {target.config['model']['method']}): "
                 f"there are no sigmas to show.")
        return
    rows = [envelope_row(layer) for layer in layers]
    doc.table(["layer", "path", "channels", "k_g", "sigma mean", "min", "max", "3-tap mass (mean)", "3-tap mass (min)"],
              [[r["name"], r["path"], r["channels"], r["size"], f"{r['sigma_mean']:.3f}", f"{r['sigma_min']:.3f}",
                f"{r['sigma_max']:.3f}", f"{100 * r['mass_3_taps_mean']:.2f}%", f"{100 * r['mass_3_taps_min']:.2f}%"]
               for r in rows])
    doc.text("3-tap mass: the share of each channel's 2-D envelope inside its central 3x3, i.e. what the envelope "
             "keeps when it is shrunk to k_g = 3 at inference (Table 1e).")
    doc.image(_save(plot_sigmas(layers, f"{target.name}: sigma per channel (Fig. 4a)"), out_dir,
                    f"sigma-{tag}.png"), f"{target.name}: every channel's sigma per layer, coloured by path "
              f"(stem / residual / identity); bar: mean, triangle: max.")
    doc.image(_save(plot_envelopes(layers), out_dir, f"envelopes-{tag}.png"),
              f"{target.name}: the 2-D envelope of the mean-sigma (top) and max-sigma (bottom) channel of each "
              f"layer at the training size (Fig. 4b).")


def _history_section(doc: Document, target: AnalysisTarget, out_dir: Path, tag: str) -> Dict[str, Any]:
    from .plots import plot_history, plot_sigma_history

    if target.run_dir is None:
        return {}
    rows = target.run_dir.metrics()
    if not rows:
        return {}
    doc.heading(f"Training history: {target.name}")
    doc.image(_save(plot_history(rows), out_dir, f"history-{tag}.png"),
              f"{target.name}: loss, top-1 error and learning rate per epoch ({RunDir.METRICS}).")
    records = target.run_dir.sigma_records()
    if records and records[0]["sigma"]:
        start = {"epoch": 0, "sigma": {row.name: list(row.sigmas) for row in target.run_dir.envelopes(epoch=None,
                                                                                                 initial=True)}}
        doc.image(_save(plot_sigma_history([start] + records), out_dir, f"sigma-history-{tag}.png"),
                  f"{target.name}: sigma per layer from its initial value (epoch 0) over the epochs ({RunDir.SIGMA}).")
    last = rows[-1]
    return {"epochs": len(rows), "final": {k: float(v) for k, v in last.items() if v not in (None, "")}}


def _erf_size(image_size: int, erf_size: Optional[int]) -> int:
    return erf_size or (4 * image_size if image_size < 64 else image_size)


def _erf_section(doc: Document, targets: List[AnalysisTarget], images: torch.Tensor, size: int,
                 out_dir: Path) -> Dict[str, Any]:
    from .plots import plot_erf

    canvas = tile_to_size(images, size)
    maps, sides, result = {}, {}, {}
    for target in targets:
        maps[target.name], sides[target.name], result[target.name] = {}, {}, {}
        for stage in stage_names(target.model):
            erf = effective_receptive_field(target.model, canvas, stage)
            side = {str(t): erf.side(t) for t in ERF_SHARES}
            maps[target.name][stage], sides[target.name][stage] = erf.map.numpy(), side
            result[target.name][stage] = {"side": side, "border_mass": erf.border_mass()}
    doc.heading("Effective receptive field")
    enlarged = (f" The {images.shape[-1]}x{images.shape[-2]} images were tiled periodically into {size}x{size} "
                f"canvases (original in the centre) so that the ERF can decay before the border; 'border' is the "
                f"share of the map within 2 pixels of the edge." if size > images.shape[-1] else "")
    doc.text(f"Luo et al. (2016), measured as RepLKNet's tools do: for each stage's output, the gradient of "
             f"relu(out[:, :, h//2, w//2]).sum() with respect to the input, relu'd, summed over channels and "
             f"averaged over {len(images)} validation images. side(t) is the side of the smallest square centred "
             f"on the centre pixel holding a share t of the raw map's total.{enlarged}")
    doc.table(["model", "stage", "side(0.2)", "side(0.5)", "side(0.99)", "border"],
              [[name, stage, r["side"]["0.2"], r["side"]["0.5"], r["side"]["0.99"], f"{r['border_mass']:.1e}"]
               for name, stages in result.items() for stage, r in stages.items()])
    doc.image(_save(plot_erf(maps, sides), out_dir, "erf.png"),
              "ERF per stage (columns) and model (rows), log scale for display; side(t) in the titles.")
    return {"input_size": size, "images": len(images), "stages": result}


def _gradcam_section(doc: Document, targets: List[AnalysisTarget], images: torch.Tensor, labels: List[int],
                     classes, out_dir: Path) -> Dict[str, Any]:
    from .plots import plot_gradcam

    maps, predictions = {}, {}
    for target in targets:
        with torch.no_grad():
            predictions[target.name] = target.model(images).argmax(1).tolist()
        maps[target.name] = gradcam_maps(target.model, images, targets=labels)
    doc.heading("GradCAM")
    doc.text("GradCAM (grad-cam package) at the last block of the last stage, explaining the true class of each "
             "image; titles give the true label and each model's prediction (Fig. 6).")
    doc.image(_save(plot_gradcam(images.cpu().numpy(), maps, labels, predictions, classes), out_dir, "gradcam.png"),
              "GradCAM maps over the validation images: " + " vs ".join(maps) + ".")
    return {"labels": labels, "predictions": predictions}


def erf_summary(result: Dict[str, Any]) -> List[str]:
    """One line per model: its ERF side(t) per stage, from :func:`analyze`'s result."""
    shares = "/".join(str(t) for t in ERF_SHARES)
    return [f"{model}: ERF side({shares}) per stage: "
            + ", ".join(f"{stage} " + "/".join(str(r["side"][str(t)]) for t in ERF_SHARES)
                        for stage, r in stages.items())
            for model, stages in result["erf"]["stages"].items()]


def analyze(path: Union[str, Path], *, compare: Optional[Union[str, Path]] = None, data: Optional[str] = None,
            images: int = 8, erf_images: int = 32, erf_size: Optional[int] = None,
            out: Union[str, Path] = "analysis", device: str = "cpu") -> Dict[str, Any]:
    """Write the analysis report of ``path`` (and ``compare``) to ``out``; returns what ``analysis.json`` holds.

    Args:
        path: a run directory or checkpoint written by ``envconv train``.
        compare: another run directory or checkpoint, shown beside it (GradCAM, ERF, sigmas). Both
            models see the same images, prepared by the first model's data config.
        data: validation data instead of the config's (Fashion-MNIST folder or image folder).
        images: images in the GradCAM figure.
        erf_images: images the ERF is averaged over.
        erf_size: canvas side for the ERF (default: 4x the image side below 64 pixels, else the image side).
        out: output folder.
        device: where the models run.

    Raises:
        ImportError: matplotlib or grad-cam missing (``pip install 'envconv[analysis]'``).
        FileNotFoundError: a missing run, checkpoint or dataset.

    Example:
        >>> analyze("runs/demo/gaussian", compare="runs/demo/none", out="runs/demo/analysis")  # doctest: +SKIP
    """
    from .plots import pyplot

    pyplot()  # fail early, before any work, without the plotting extra
    torch_device = torch.device(device)
    targets = [load_target(path, torch_device)]
    if compare is not None:
        targets.append(load_target(compare, torch_device))
    if len(targets) == 2 and targets[0].name == targets[1].name:
        targets[0].name, targets[1].name = f"{targets[0].name} (A)", f"{targets[1].name} (B)"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(f"envconv analysis: {' vs '.join(t.name for t in targets)}")
    doc.text("Models: " + "; ".join(f"{t.name} = {t.checkpoint} (epoch {t.epoch}, {t.config['model']['name']}, "
                                    f"method {t.config['model']['method']})" for t in targets) + ".")
    result: Dict[str, Any] = {"models": {}, "erf": None, "gradcam": None}
    for i, target in enumerate(targets):
        layers = envelopes(target.model)
        _sigma_section(doc, target, layers, out_dir, f"model{i}")
        history = _history_section(doc, target, out_dir, f"model{i}")
        result["models"][target.name] = {"checkpoint": str(target.checkpoint), "epoch": target.epoch,
                                         "method": target.config["model"]["method"],
                                         "layers": [envelope_row(layer) for layer in layers], "history": history}
    dataset = _validation_data(targets[0], data)
    gradcam_images, labels, classes = _images(dataset, images)
    erf_batch, _, _ = _images(dataset, erf_images)
    size = _erf_size(erf_batch.shape[-1], erf_size)
    result["erf"] = _erf_section(doc, targets, erf_batch.to(torch_device), size, out_dir)
    result["gradcam"] = _gradcam_section(doc, targets, gradcam_images.to(torch_device), labels, classes, out_dir)
    atomic_write_bytes(doc.markdown().encode(), out_dir / "report.md")
    atomic_write_bytes(doc.html().encode(), out_dir / "report.html")
    atomic_write_bytes(json.dumps(result, indent=1).encode(), out_dir / "analysis.json")
    result["images"] = doc.images()
    return result
