"""Layer level: envconv's envelope vs the naive separable pair, a full k x k depthwise conv,
kornia's gaussian_blur2d and ``x.clone()`` (the bandwidth floor), at ResNet-50's seven envelope places.

Each figure is ``time(ours) / time(other)`` measured in adjacent interleaved pairs
(:func:`benchmarks.timing.paired_ratio`). "ours" is the ``envconv::envelope`` op
(:func:`envconv.functional.gaussian_envelope`) as the layers call it: the implementations
:mod:`envconv.ops.dispatch` picks and, at the identity places, only the positions the 1x1
stride-2 conv reads. The others compute the full map; "naive separable" is two grouped 1-D
convs with autograd through them (what the paper's formulation costs without our kernels).

    python -m benchmarks.layer_speed [--batch 32] [--repeats 15] [--sizes 9 3] [--layouts nchw channels_last]
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from envconv import functional, ops
from envconv import kernels as EF

from .timing import paired_ratio

#: (name, channels, height = width, stride of the conv that reads the envelope)
PLACES = [
    ("stem", 3, 224, 1),
    ("stage2 residual", 128, 56, 1),
    ("stage3 residual", 256, 28, 1),
    ("stage4 residual", 512, 14, 1),
    ("stage2 identity", 256, 56, 2),
    ("stage3 identity", 512, 28, 2),
    ("stage4 identity", 1024, 14, 2),
]


def _variants(x: torch.Tensor, raw: torch.Tensor, size: int, stride: int) -> Dict[str, Callable[[], torch.Tensor]]:
    c = x.shape[1]

    def full():
        k = EF.gaussian_kernel1d(raw, size)
        return F.conv2d(x, (k[:, :, None] * k[:, None, :]).unsqueeze(1), padding=size // 2, groups=c)

    def naive():
        k = EF.gaussian_kernel1d(raw, size)
        rows = F.conv2d(x, k.view(c, 1, 1, size), padding=(0, size // 2), groups=c)
        return F.conv2d(rows, k.view(c, 1, size, 1), padding=(size // 2, 0), groups=c)

    variants = {
        "ours": lambda: functional.gaussian_envelope(x, raw, size, stride=stride),
        "naive separable": naive,
        "full kxk depthwise": full,
        "clone": lambda: x.clone(),
    }
    if importlib.util.find_spec("kornia") is not None:
        import kornia

        def blur():  # kornia has one sigma per image (and axis), not per channel
            sigma = EF.sigma2_from_raw(raw[:1]).sqrt().expand(x.shape[0], 2)
            return kornia.filters.gaussian_blur2d(x, (size, size), sigma)

        variants["kornia gaussian_blur2d"] = blur
    return variants


def _impl_name(x: torch.Tensor, size: int, stride: int, train: bool) -> str:
    """The implementations the dispatch picks: forward, and backward in training."""
    if size == 1:
        return "identity"
    name = ops.forward_impl(x, size, [stride, stride], "zeros")
    return f"{name} / {ops.backward_impl(x, size, [stride, stride], 'zeros')}" if train else name


def _with_backward(fn: Callable[[], torch.Tensor], upstream: Dict[tuple, torch.Tensor]) -> Callable[[], None]:
    def run():
        y = fn()
        if y.requires_grad:
            key = (tuple(y.shape), y.is_contiguous())
            if key not in upstream:
                upstream[key] = torch.ones_like(y)
            y.backward(upstream[key])

    return run


def run(batch: int = 32, repeats: int = 15, sizes=(9, 3), layouts=("nchw", "channels_last"),
        modes=("forward", "forward+backward"), places=None, log=print) -> List[dict]:
    rows = []
    for name, c, hw, stride in PLACES:
        if places and name not in places:
            continue
        for layout in layouts:
            x = torch.randn(batch, c, hw, hw)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            for size in sizes:
                for mode in modes:
                    train = mode == "forward+backward"
                    x.requires_grad_(train and name != "stem")  # the image needs no gradient
                    raw = torch.zeros(c, requires_grad=train)
                    variants = _variants(x, raw, size, stride)
                    upstream: Dict[tuple, torch.Tensor] = {}
                    with torch.set_grad_enabled(train):
                        fns = {k: (_with_backward(v, upstream) if train else v) for k, v in variants.items()}
                        ours = fns.pop("ours")
                        for other, fn in fns.items():
                            ratio = paired_ratio(ours, fn, repeats=repeats)
                            row = dict(place=name, shape=[c, hw, hw], stride=stride, batch=batch, size=size,
                                       layout=layout, mode=mode, versus=other, ratio=ratio.as_dict(),
                                       impl=_impl_name(x, size, stride, train))
                            rows.append(row)
                            log(f"{name:16s} {layout:13s} k={size} {mode:16s} ours/{other:22s} {ratio}  "
                                f"({ratio.ms_a:.2f} vs {ratio.ms_b:.2f} ms)")
                    x.grad = None
    return rows


def markdown(rows: List[dict]) -> str:
    """One table per (size, mode): ours / other for every place and layout."""
    others = sorted({r["versus"] for r in rows}, key=lambda v: (v != "clone", v))
    lines = []
    for size in sorted({r["size"] for r in rows}, reverse=True):
        for mode in ("forward", "forward+backward"):
            sub = [r for r in rows if r["size"] == size and r["mode"] == mode]
            if not sub:
                continue
            lines += [f"\n**k_g = {size}, {mode}** (time of ours / time of the column, median of paired ratios; "
                      f"batch {sub[0]['batch']})\n",
                      "| place | layout | impl | " + " | ".join(f"vs {o}" for o in others) + " |",
                      "|---|---|---|" + "---|" * len(others)]
            keys = sorted({(r["place"], r["layout"]) for r in sub}, key=lambda k: ([p[0] for p in PLACES].index(k[0]),
                                                                                  k[1]))
            for place, layout in keys:
                cells = {r["versus"]: f"{r['ratio']['median']:.2f}" for r in sub
                         if r["place"] == place and r["layout"] == layout}
                impl = next(r["impl"] for r in sub if r["place"] == place and r["layout"] == layout)
                lines.append(f"| {place} | {layout} | {impl} | " + " | ".join(cells.get(o, "-") for o in others) + " |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--sizes", type=int, nargs="+", default=[9, 3])
    p.add_argument("--layouts", nargs="+", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    p.add_argument("--modes", nargs="+", default=["forward", "forward+backward"],
                   choices=["forward", "forward+backward"])
    p.add_argument("--places", nargs="+", default=None, help="subset of: " + ", ".join(p[0] for p in PLACES))
    return p


def main(args: argparse.Namespace) -> List[dict]:
    rows = run(args.batch, args.repeats, args.sizes, args.layouts, args.modes, args.places)
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
