"""The C++ CPU kernel's two loops on 2-D maps: the 2-D ring loop against the pass-per-axis (N-D) loop.

Both compute the same envelope (one sigma per channel, zero padding) and its backward (input
and sigma gradients, eq. (8)); this times them head to head - ring / N-D, paired and
interleaved - at ResNet-50's seven envelope places (batch 8) and at small maps, in both layouts,
forward and forward + backward, ``k_g`` 9 and 3: the measurement that decides which family stays.

    python -m benchmarks.cpp_families [--quick] [--repeats 9] [--save]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List

import torch

from envconv import kernels as EF
from envconv.ops import cpu

from .layer_speed import PLACES
from .timing import paired_ratio

SMALL = [("stem 28x28 (3 ch)", 3, 28, 1), ("small stage2 28x28", 16, 28, 2), ("small stage3 14x14", 32, 14, 2)]


def _runners(x: torch.Tensor, size: int, stride: int, train: bool) -> Dict[str, Callable[[], object]]:
    c = x.shape[1]
    raw = torch.randn(c, dtype=x.dtype) * 0.3
    g = EF.gaussian_kernel1d(raw, size).to(x.dtype)
    d = EF.gaussian_kernel1d_derivative(raw, size).to(x.dtype)
    s = [stride, stride]
    y = cpu.forward(x, g, s)
    gy = torch.randn_like(y)
    if train:
        return {"ring": lambda: (cpu.forward(x, g, s, ring=True), cpu.backward(gy, x, g, d, s, True, ring=True)),
                "nd": lambda: (cpu.forward(x, g, s, ring=False), cpu.backward(gy, x, g, d, s, True, ring=False))}
    return {"ring": lambda: cpu.forward(x, g, s, ring=True), "nd": lambda: cpu.forward(x, g, s, ring=False)}


def run(batch: int = 8, repeats: int = 9, quick: bool = False, log=print) -> List[dict]:
    if not cpu.available():
        raise SystemExit(f"the C++ kernel is not available: {cpu.unavailable_reason()}")
    places = [(n, c, hw, s) for n, c, hw, s in PLACES] + SMALL
    if quick:
        places, batch, repeats = places[:1] + SMALL[:1], 2, 3
    rows = []
    for name, c, hw, stride in places:
        n = batch if hw > 28 else 4 * batch
        for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            x = torch.randn(n, c, hw, hw).contiguous(memory_format=fmt)
            for size in (9, 3):
                for train in (False, True):
                    run_ = _runners(x, size, stride, train)
                    ratio = paired_ratio(run_["ring"], run_["nd"], repeats=repeats)
                    row = {"place": name, "shape": list(x.shape), "stride": stride, "layout": layout, "size": size,
                           "mode": "forward+backward" if train else "forward", **ratio.as_dict()}
                    rows.append(row)
                    log(f"{name:22s} {layout:13s} k={size} {row['mode']:16s} ring/nd {ratio}")
    return rows


def markdown(rows: List[dict]) -> str:
    lines = ["| place | layout | k_g | mode | ring / N-D (median [q1-q3]) | ring ms | N-D ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['place']} | {r['layout']} | {r['size']} | {r['mode']} | {r['median']:.3f}x "
                     f"[{r['q1']:.3f}-{r['q3']:.3f}] | {r['ms_a']:.2f} | {r['ms_b']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--save", metavar="STEM", default=None, help="write STEM.json and STEM.md under benchmarks/results")
    args = p.parse_args()
    rows = run(args.batch, args.repeats, args.quick)
    if args.save:
        out = Path(__file__).parent / "results" / args.save
        out.with_suffix(".json").write_text(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__,
                                                        "rows": rows}, indent=1))
        out.with_suffix(".md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
