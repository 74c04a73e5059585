"""``envconv analyze RUN_DIR_OR_CHECKPOINT [--compare OTHER] [--data PATH] [--images N] [--out DIR]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arguments import positive_int
from ..rundir import RunDir, check_writable

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv analyze``'s arguments to ``parser``."""
    parser.add_argument("path", help=f"a run directory (its {RunDir.LAST}, else {RunDir.BEST}) or a checkpoint of "
                        f"envconv train")
    parser.add_argument("--compare", help="another run directory or checkpoint, shown beside it (e.g. the baseline)")
    parser.add_argument("--data", help="validation data instead of the config's (the Fashion-MNIST folder, or "
                        "an image folder with one sub-folder per class)")
    parser.add_argument("--images", type=positive_int, default=8, help="images in the GradCAM figure (default 8)")
    parser.add_argument("--erf-images", type=positive_int, default=32,
                        help="images the ERF is averaged over (default 32)")
    parser.add_argument("--erf-size", type=positive_int, help="canvas side for the ERF (default: 4x the image side for "
                        "images under 64 pixels, tiled periodically; else the image side)")
    parser.add_argument("--out", type=Path, help="output folder (default: analysis/ in the run directory, or "
                        "beside the checkpoint)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run ``envconv analyze``: write the report and print where it is; returns the exit code."""
    from .report import analyze, erf_summary

    for name in ("images", "erf_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    path = Path(args.path)
    out = Path(args.out or (path if path.is_dir() else path.parent) / "analysis")
    if path.exists():  # a missing path gets analyze's own message
        check_writable(out)  # before the work: a read-only run directory fails here
    result = analyze(path, compare=args.compare, data=args.data, images=args.images, erf_images=args.erf_images,
                     erf_size=args.erf_size, out=out, device=args.device)
    print("\n".join(erf_summary(result)))
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'analysis.json'} and "
          f"{len(result['images'])} figures")
    return 0
