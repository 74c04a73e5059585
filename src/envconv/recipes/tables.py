"""``envconv envelopes`` and ``envconv methods``: the envelope table of a model, and the method table.

``envconv envelopes`` lists the envelopes of a training checkpoint or run directory (its model
rebuilt), of a bare state dict file, or of a freshly built model (``--model NAME``). The ``k_g``
column is the envelope's size, as its record stores it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Sequence, Tuple

from ..listing import EnvelopeInfo, envelopes
from ..state_dict import load_torch_file, load_weights
from .arguments import positive_int
from .rundir import CHECKPOINT_KEYS, checkpoint_of, model_from_checkpoint

__all__ = ["format_table", "envelope_table", "add_arguments", "main", "add_methods_arguments", "methods_main"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], min_width: int = 0, align: str = "") -> str:
    """Plain-text table, columns at least ``min_width`` wide.

    ``align`` holds "l" or "r" per column (right for columns it does not cover); a last
    column aligned "l" is not padded.

    Example:
        >>> print(format_table(["name", "n"], [["a", "1"], ["bcd", "22"]], align="l"))
        name   n
        a      1
        bcd   22
    """
    widths = [max(min_width, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    align = align.ljust(len(header), "r")

    def line(cells: Sequence[str]) -> str:
        text = "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align))
        return text.rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows])


def envelope_table(rows: Sequence[EnvelopeInfo]) -> str:
    """The table of :func:`envconv.envelopes` rows; ``k_g`` is ``-`` where the size is unknown (an old state dict).

    With a sigma per axis somewhere, a column gives each axis's mean sigma (first axis first).
    """
    header = ["layer", "path", "channels", "k_g", "sigma mean", "min", "max"]
    cells = [[r.name, r.path, str(r.channels), str(r.size), f"{r.sigma_mean:.4f}",
              f"{r.sigma_min:.4f}", f"{r.sigma_max:.4f}"] for r in rows]
    if any(r.axis_sigmas is not None for r in rows):
        header.append("mean per axis")
        for row, r in zip(cells, rows):
            row.append("-" if r.axis_means is None else " / ".join(f"{m:.4f}" for m in r.axis_means))
    return format_table(header, cells, align="ll")


def _is_training_checkpoint(path: Path) -> bool:
    obj = load_torch_file(path)
    return isinstance(obj, dict) and all(k in obj for k in CHECKPOINT_KEYS)


def _rows_and_title(args: argparse.Namespace) -> Tuple[List[EnvelopeInfo], str]:
    if args.model:
        from ..models import create_model

        model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, method=args.method)
        title = f"{args.model} ({args.method}), freshly initialised"
        return envelopes(model), f"{title}; {sum(p.numel() for p in model.parameters()):,} parameters"
    path = checkpoint_of(args.path)
    if _is_training_checkpoint(path):
        model, ckpt = model_from_checkpoint(path)
        model_cfg = ckpt["config"]["model"]
        title = f"{path}: {model_cfg['name']} ({model_cfg['method']}), epoch {ckpt['epoch']}"
        return envelopes(model), f"{title}; {sum(p.numel() for p in model.parameters()):,} parameters"
    return envelopes(load_weights(path)), f"{path}: a state dict"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv envelopes``' arguments to ``parser``."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("path", nargs="?", type=Path, help="a run directory, a checkpoint of envconv train, or a file "
                      "written by torch.save(model.state_dict())")
    what.add_argument("--model", help="a model name for create_model (freshly built)")
    parser.add_argument("--method", default="gaussian", help="with --model: the method (default gaussian)")
    parser.add_argument("--num-classes", type=positive_int, default=1000, help="with --model (default 1000)")
    parser.add_argument("--in-chans", type=positive_int, default=3, help="with --model (default 3)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run ``envconv envelopes``: print the envelope table."""
    try:
        rows, title = _rows_and_title(args)
    except ValueError as err:
        if args.path is None or str(args.path) in str(err):
            raise
        raise ValueError(f"{args.path}: {err}") from err
    print(title)
    print(envelope_table(rows) if rows else "no Gaussian envelopes")
    return 0


def add_methods_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv methods``' arguments to ``parser``."""
    parser.add_argument("--model", default="small_resnet20",
                        help="model name for create_model (default: small_resnet20; e.g. resnet50)")
    parser.add_argument("--num-classes", type=positive_int, default=10, help="classifier outputs (default: 10)")
    parser.add_argument("--in-chans", type=positive_int, default=3, help="image channels (default: 3)")
    return parser


def methods_main(args: argparse.Namespace) -> int:
    """Run ``envconv methods``: every comparison method with its layers and extra parameters on a model."""
    from ..conv import ConvVariant
    from ..methods import METHODS
    from ..models import create_model

    def build(method: str, **options):
        return create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, method=method,
                            **options)

    base = sum(p.numel() for p in build("none").parameters())
    print(f"Comparison methods on {args.model} (num_classes={args.num_classes}, in_chans={args.in_chans}), "
          f"placed by where='downsample', stem='paper'; parameters counted on the built models.\n")
    rows = []
    for name, spec in METHODS.items():
        model = build(name, **({"sigma": 0.0} if name == "fixed" else {}))
        layers = sum(isinstance(m, ConvVariant) for m in model.modules())
        extra = sum(p.numel() for p in model.parameters()) - base
        rows.append([name, spec.reference, str(layers), f"{extra:,}", spec.summary])
    print(format_table(["method", "paper", "layers", "extra params", "what replaces the convolution"], rows,
                       align="llrrl"))
    return 0
