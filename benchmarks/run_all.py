"""Run every benchmark and write ``benchmarks/results/<date>-<machine>.json`` and ``.md``.

    python -m benchmarks.run_all [--quick] [--repeats N]

``--quick`` runs tiny shapes (a smoke run; its numbers are not the targets' conditions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
from pathlib import Path

import torch

from envconv.recipes.machine import machine_info

from . import layer_speed, model_speed

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {**machine_info(), "host": platform.node()}


def slug(info: dict) -> str:
    name = info.get("gpu") or f"{info['cpu']}-{info['threads']}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(results: dict, suffix: str, markdown: str) -> Path:
    """Write ``results/<date>-<machine>[-suffix].json`` and ``.md`` (atomically); returns the base path."""
    info = machine()
    stamp = datetime.date.today().isoformat()
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"{stamp}-{slug(info)}{'-' + suffix if suffix else ''}"
    atomic_write(base.with_suffix(".json"), json.dumps({"date": stamp, "machine": info, **results}, indent=1))
    header = (f"# envconv benchmarks, {stamp}\n\nMachine: {info['cpu']}, {info['threads']} threads, "
              f"torch {info['torch']}" + (f", GPU {info['gpu']}" if "gpu" in info else "") + "\n\n")
    atomic_write(base.with_suffix(".md"), header + markdown + "\n")
    print(f"wrote {base}.json and {base}.md")
    return base


def main(args: argparse.Namespace) -> Path:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        layers = layer_speed.run(batch=2, repeats=args.repeats or 3, places=["stem", "stage4 identity"])
        model = model_speed.run("small_resnet20", batch=4, image_size=32, repeats=args.repeats or 3,
                                num_classes=10, device=device)
    else:
        layers = layer_speed.run(batch=args.batch, repeats=args.repeats or 15)
        model = model_speed.run(args.model, batch=16, image_size=224, repeats=args.repeats or 9, device=device)
    markdown = "## Model level\n" + model_speed.markdown(model) + "\n\n## Layer level\n" + layer_speed.markdown(layers)
    return save({"layers": layers, "model": model}, "quick" if args.quick else "", markdown)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run")
    p.add_argument("--repeats", type=int, default=None, help="paired repeats (default 15 layer / 9 model)")
    p.add_argument("--batch", type=int, default=32, help="layer-level batch (default 32)")
    p.add_argument("--model", default="resnet50")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
