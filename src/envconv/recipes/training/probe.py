"""``envconv probe``: the transfer protocol of the paper's Table 2 (a linear probe).

The trained network is frozen; its features before the final classifier (after the global
average pooling) are computed once for every image, without augmentation, and only a new
linear classifier is trained on them (SGD with momentum, cosine schedule). The result is
the probe's top-1 / top-5 error on the validation images.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...state_dict import atomic_write_bytes
from ..arguments import non_negative_float, non_negative_int, positive_float, positive_int
from ..data import build_datasets, build_loader
from ..rundir import RunDir, check_writable, model_from_checkpoint
from .distributed import pick_device
from .engine import topk_correct
from .progress import progress_bar

__all__ = ["PROBE_DATASETS", "classifier_of", "extract_features", "train_linear_probe", "linear_probe",
           "add_arguments", "main"]


def classifier_of(model: nn.Module) -> nn.Linear:
    """The model's final classifier: its last ``nn.Linear`` in ``named_modules`` order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to take the features before")
    return linears[-1]


@torch.no_grad()
def extract_features(model: nn.Module, loader, device: torch.device,
                     progress=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The inputs of the model's classifier for every image of ``loader`` (model in eval mode), and the labels."""
    model.eval()
    captured = []
    hook = classifier_of(model).register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].float().cpu()))
    labels = []
    try:
        for images, targets in loader:
            model(images.to(device))
            labels.append(targets)
            if progress is not None:
                progress.update(1)
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(labels)


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, *, epochs: int = 30,
                       lr: float = 0.1, batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0) -> nn.Linear:
    """A linear classifier trained on fixed features by SGD (momentum 0.9, cosine schedule), cross-entropy."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Linear(train_x.shape[1], num_classes)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = -(-len(train_x) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(probe(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return probe


def _errors(probe: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    with torch.no_grad():
        logits = probe(x)
        top1, top5 = topk_correct(logits, y).tolist()
        loss = F.cross_entropy(logits, y).item()
    return {"loss": loss, "top1_err": 100.0 * (1 - top1 / len(y)), "top5_err": 100.0 * (1 - top5 / len(y))}


PROBE_DATASETS = ("imagefolder", "fashion_mnist", "digits")


def linear_probe(
    checkpoint: Union[str, Path],
    train_data: Optional[str] = None,
    val_data: Optional[str] = None,
    *,
    dataset: str = "imagefolder",
    epochs: int = 30,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    device: str = "auto",
    workers: Optional[int] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Train a linear probe on a checkpoint's frozen features; returns its errors on ``val_data``.

    Args:
        checkpoint: a checkpoint written by ``envconv train``.
        train_data: training folder of the target task (one sub-folder per class for
            ``imagefolder``; the IDX folder for ``fashion_mnist``; none for ``digits``).
        val_data: its validation folder, likewise.
        dataset: ``imagefolder``, ``fashion_mnist`` or ``digits`` (scikit-learn's 8x8 digits
            scaled up to the model's input size: ``envconv.recipes.data.Digits``).
        epochs: the probe's SGD epochs.
        lr: its learning rate.
        batch_size: its batch size.
        weight_decay: its weight decay.
        device: where the features are computed.
        workers: data-loading processes (default: the checkpoint config's).
        seed: the probe's initialisation and order.
    """
    torch_device = pick_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, torch_device)
    config = ckpt["config"]
    if dataset not in PROBE_DATASETS:
        raise ValueError(f"dataset must be one of {PROBE_DATASETS}, got {dataset!r}")
    if dataset != "digits" and not (train_data and val_data):
        raise ValueError(f"the {dataset} probe needs the target task's training and validation data "
                         f"(--train-data, --val-data)")
    if dataset == "fashion_mnist" and Path(train_data) != Path(val_data):
        raise ValueError("for fashion_mnist, --train-data and --val-data are the same folder of IDX files "
                         "(its train and t10k files are used)")
    data_cfg = copy.deepcopy(config["data"])
    data_cfg.update(dataset=dataset, train=train_data, val=val_data, train_subset=None, val_subset=None,
                    augment="none", root=train_data if dataset == "fashion_mnist" else None)
    if workers is not None:
        data_cfg["workers"] = workers
    start = time.perf_counter()
    # num_classes only bounds a check here: the probe gets as many outputs as the task has classes
    datasets = dict(zip(("train", "val"), build_datasets(data_cfg, config["model"]["in_chans"], num_classes=10 ** 9)))
    classes = len(datasets["train"].classes)  # build_datasets checked that val has the same classes
    features = {}
    for split, data in datasets.items():
        loader = build_loader(data, batch_size, train=False, workers=data_cfg["workers"])
        with progress_bar(len(loader), f"features ({split})", enabled=sys.stderr.isatty()) as bar:
            features[split] = extract_features(model, loader, torch_device, progress=bar)
    train_x, train_y = features["train"]
    probe = train_linear_probe(train_x, train_y, classes, epochs=epochs, lr=lr, batch_size=batch_size,
                               weight_decay=weight_decay, seed=seed)
    return {"checkpoint": str(checkpoint), "model": config["model"]["name"], "method": config["model"]["method"],
            "feature_dim": train_x.shape[1], "classes": classes, "train_images": len(train_y),
            "val_images": len(features["val"][1]), "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
            "train": _errors(probe, train_x, train_y), "val": _errors(probe, *features["val"]),
            "seconds": time.perf_counter() - start}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv probe``'s arguments to ``parser``."""
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by envconv train")
    parser.add_argument("--train-data", help="training images of the target task (not for --dataset digits)")
    parser.add_argument("--val-data", help="validation images of the target task (not for --dataset digits)")
    parser.add_argument("--dataset", default="imagefolder", choices=PROBE_DATASETS,
                        help="how the folders are laid out (default imagefolder: one sub-folder per class); "
                        "digits: scikit-learn's 8x8 digits scaled up to the model's input size, no folders")
    parser.add_argument("--epochs", type=positive_int, default=30, help="probe training epochs (default 30)")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="probe learning rate (default 0.1)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="(default 256)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="(default 0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--workers", type=non_negative_int, help="data-loading processes (default: the config's)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--output", type=Path, help="JSON file (default: probe-<checkpoint>.json beside it)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run ``envconv probe``: print the probe's errors and write them as JSON."""
    output = Path(args.output or RunDir.probe_file(Path(args.checkpoint), args.dataset))
    check_writable(output.parent)  # before the probe trains, not after it
    result = linear_probe(args.checkpoint, args.train_data, args.val_data, dataset=args.dataset, epochs=args.epochs,
                          lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay, device=args.device,
                          workers=args.workers, seed=args.seed)
    print(f"linear probe on {result['model']} ({result['method']}) features of dimension {result['feature_dim']}: "
          f"{result['classes']} classes, {result['train_images']:,} training / {result['val_images']:,} "
          f"validation images, {result['epochs']} epochs, {result['seconds']:.0f} s")
    for split in ("train", "val"):
        r = result[split]
        print(f"  {split:5s} top-1 error {r['top1_err']:6.2f}%  top-5 error {r['top5_err']:6.2f}%  "
              f"loss {r['loss']:.4f}")
    atomic_write_bytes(json.dumps(result, indent=1).encode(), output)
    print(f"wrote {output}")
    return 0
