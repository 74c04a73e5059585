"""``envconv eval``: a checkpoint's top-1 / top-5 error, loss and speed, optionally with shrunk envelopes.

``--envelope-size 3`` is the paper's Table 1e: the envelopes trained with k_g = 9 evaluated
with 3 taps (the same sigmas); ``auto`` picks per layer the smallest size that keeps
``1 - eps`` of the envelope's mass (:func:`envconv.shrink`). ``--recalibrate-bn N`` first
recomputes every BatchNorm layer's running statistics with the final weights over N batches of
the training images (without augmentation): the running averages kept during training lag the
weights, which on small objects on a large canvas costs many points of error.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ...convert import shrink
from ...listing import envelopes
from ...state_dict import atomic_write_bytes
from ..arguments import integer, non_negative_int, positive_float, positive_int
from ..data import build_dataset, build_loader, build_recalibration_loader
from ..rundir import RunDir, check_writable, model_from_checkpoint
from .distributed import pick_device
from .engine import evaluate, recalibrate_batchnorm
from .progress import progress_bar

__all__ = ["evaluate_checkpoint", "data_config_for", "add_arguments", "main"]


def data_config_for(config: Dict[str, Any], data: Optional[str], split: str) -> Dict[str, Any]:
    """The checkpoint's ``data`` section with ``data`` (a folder) put in for ``split``."""
    data_cfg = copy.deepcopy(config["data"])
    if data is None:
        return data_cfg
    if data_cfg["dataset"] == "fashion_mnist":
        data_cfg["root"] = data
    elif data_cfg["dataset"] == "imagefolder":
        data_cfg[split] = data
    else:
        raise ValueError(f"--data does not apply to data.dataset={data_cfg['dataset']!r}")
    return data_cfg


def evaluate_checkpoint(
    checkpoint: Union[str, Path],
    *,
    data: Optional[str] = None,
    envelope_size: Union[int, str, Tuple[int, ...], None] = None,
    eps: float = 1e-2,
    batch_size: Optional[int] = None,
    device: str = "auto",
    workers: Optional[int] = None,
    object_scale: Optional[float] = None,
    recalibrate_bn: int = 0,
) -> Dict[str, Any]:
    """Evaluate a training checkpoint on its validation data (or on ``data``).

    Args:
        checkpoint: a ``last.pt`` / ``best.pt`` written by ``envconv train``.
        data: validation folder (imagefolder) or Fashion-MNIST root instead of the config's.
        envelope_size: set every envelope to this odd size (or a tuple, one per spatial axis; below
            the trained size it truncates the Gaussian, above it adds taps), or ``"auto"``; None keeps them.
        eps: mass left out by ``"auto"``.
        batch_size: default: the training batch size.
        device: ``auto``, ``cpu``, ``cuda`` ...
        workers: data-loading processes (default: the config's).
        object_scale: Fashion-MNIST: the test garments at this scale on the training canvas
            (``data.object_scale``) instead of the trained one; None keeps it.
        recalibrate_bn: first recompute the BatchNorm statistics over this many training batches
            (:func:`~envconv.recipes.training.engine.recalibrate_batchnorm`; the training data at
            the trained object scale); 0 keeps them.

    Returns:
        A dict with the checkpoint, epoch, envelope sizes, images, loss, top-1 / top-5 error (%)
        and images/s.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    torch_device = pick_device(device)
    model, ckpt = model_from_checkpoint(checkpoint, torch_device)
    config = ckpt["config"]
    if envelope_size is not None:
        shrink(model, envelope_size, eps=eps)
    batch_size = batch_size or config["train"]["batch_size"]
    if recalibrate_bn:
        # the checkpoint's training data (a Fashion-MNIST folder given by `data` holds both splits)
        fashion = config["data"]["dataset"] == "fashion_mnist"
        loader = build_recalibration_loader(data_config_for(config, data if fashion else None, "train"),
                                            config["model"]["in_chans"], config["model"]["num_classes"], batch_size,
                                            workers=workers)
        recalibrate_batchnorm(model, loader, recalibrate_bn, device=torch_device)
    data_cfg = data_config_for(config, data, "val")
    if object_scale is not None:
        if data_cfg["dataset"] != "fashion_mnist":
            raise ValueError(f"an object scale applies to data.dataset=fashion_mnist, not {data_cfg['dataset']!r}")
        data_cfg["object_scale"] = float(object_scale)
    dataset = build_dataset(data_cfg, "val", config["model"]["in_chans"], config["model"]["num_classes"])
    loader = build_loader(dataset, batch_size, train=False,
                          workers=data_cfg["workers"] if workers is None else workers,
                          pin_memory=torch_device.type == "cuda")
    with progress_bar(len(loader), "eval", enabled=sys.stderr.isatty()) as bar:
        stats = evaluate(model, loader, device=torch_device, channels_last=config["train"]["channels_last"],
                         progress=bar)
    return {"checkpoint": str(checkpoint), "epoch": ckpt["epoch"], "model": config["model"]["name"],
            "method": config["model"]["method"],
            "envelope_sizes": {row.name: row.size for row in envelopes(model)},
            "object_scale": data_cfg.get("object_scale", 1.0), "recalibrate_bn": recalibrate_bn,
            "device": str(torch_device), **stats.as_dict()}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv eval``'s arguments to ``parser``."""
    parser.add_argument("--checkpoint", required=True, help=f"a checkpoint written by envconv train ({RunDir.LAST}, "
                        f"{RunDir.BEST})")
    parser.add_argument("--data", help="evaluate on this folder instead of the config's validation data "
                        "(imagefolder: the class folders; fashion_mnist: the folder of IDX files)")
    parser.add_argument("--envelope-size", type=_size, help="set every envelope to this odd size (3: Table 1e; above "
                        "the trained size it adds taps), to one per spatial axis (3x9x9) or 'auto' (smallest size "
                        "keeping 1 - eps of the mass)")
    parser.add_argument("--object-scale", type=positive_float, help="Fashion-MNIST: test with the garments at this "
                        "scale on the training canvas (data.object_scale; default: as trained)")
    parser.add_argument("--eps", type=positive_float, default=1e-2,
                        help="mass left out by --envelope-size auto (default 0.01)")
    parser.add_argument("--recalibrate-bn", type=non_negative_int, default=0, metavar="BATCHES",
                        help="first recompute the BatchNorm statistics with the final weights over this many "
                        "batches of the training images, without augmentation (default 0: as trained)")
    parser.add_argument("--batch-size", type=positive_int, help="default: the training batch size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--workers", type=non_negative_int, help="data-loading processes (default: the config's)")
    parser.add_argument("--output", type=Path, help="JSON file for the result (default: eval[-kN].json beside "
                        "the checkpoint)")
    return parser


def _size(text: str) -> Union[int, str, Tuple[int, ...]]:
    if text == "auto":
        return text
    try:
        sizes = tuple(integer(part) for part in text.split("x"))  # int() would read "3_3" as 33
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"envelope size must be an odd integer, one per axis (3x9x9) or 'auto', "
                                         f"got {text!r}") from None
    return sizes[0] if len(sizes) == 1 else sizes


def main(args: argparse.Namespace) -> int:
    """Run ``envconv eval``: print the errors and write them as JSON beside the checkpoint."""
    output = Path(args.output or RunDir.eval_file(Path(args.checkpoint), args.envelope_size, args.object_scale,
                                                  args.recalibrate_bn))
    check_writable(output.parent)  # before the evaluation, not after it
    result = evaluate_checkpoint(args.checkpoint, data=args.data, envelope_size=args.envelope_size, eps=args.eps,
                                 batch_size=args.batch_size, device=args.device, workers=args.workers,
                                 object_scale=args.object_scale, recalibrate_bn=args.recalibrate_bn)
    sizes = sorted(set(result["envelope_sizes"].values()), key=lambda k: (k,) if isinstance(k, int) else tuple(k))
    rows = [("checkpoint", f"{result['checkpoint']} (epoch {result['epoch']})"),
            ("model", f"{result['model']} ({result['method']})"),
            ("envelope sizes", ", ".join(map(str, sizes)) if sizes else "no envelopes"),
            ("object scale", f"{result['object_scale']:g}"),
            ("BatchNorm statistics", f"recomputed over {args.recalibrate_bn} training batches" if args.recalibrate_bn
             else "as trained"),
            ("images", f"{result['images']:,}"), ("loss", f"{result['loss']:.4f}"),
            ("top-1 error", f"{result['top1_err']:.2f}%"), ("top-5 error", f"{result['top5_err']:.2f}%"),
            ("images/s", f"{result['images_per_s']:.0f} on {result['device']}")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    atomic_write_bytes(json.dumps(result, indent=1).encode(), output)
    print(f"wrote {output}")
    return 0
