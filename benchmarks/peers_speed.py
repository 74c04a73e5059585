"""envconv beside the libraries a user would pick instead: converted / plain ratios, measured in one process.

Every row is a ResNet-50 with one method at the paper's places (``envconv.recipes.peers``), or a
library's own architecture, against the plain torchvision ResNet-50 with the same batch, in
channels_last: a training step (SGD, envconv's ``k_g = 9``), inference (envconv shrunk to 3 taps;
DCLS also with its dense kernels built once and frozen into plain convolutions,
:func:`envconv.recipes.peers.freeze_dcls`, an inference-only row; the others as they run) and
the training step's memory (``benchmarks.model_speed.training_memory``:
parameters, gradients, optimizer state and what autograd saves). Then the layer-level table at
one strided place (ResNet-50's ``layer2.0.conv2``: 128 channels, 56 x 56, 3 x 3 at stride 2):
each method's replacement of that convolution, forward and forward + backward, against the
plain convolution. Paired, interleaved repeats (``benchmarks.timing``); DCLS gets fewer (its step
is about ten times the plain one).

    python -m benchmarks.peers_speed [--batch 8] [--repeats 7] [--quick] [--save] [--net small_resnet20]
                                     [--rows ROW ...]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torchvision
from torch import nn

import envconv
from envconv.recipes import peers  # registers the peer methods
from envconv.recipes.machine import machine_info

from .model_speed import _inference, _training_step, training_memory
from .timing import paired_ratio

#: row -> (builder of the model, its inference form, repeats factor). The inference form: ``"shrink"``
#: (envconv's envelopes shrink to 3 taps), ``"frozen"`` (DCLS's kernels frozen: inference only) or ``None``.
ROWS: Dict[str, tuple] = {
    "envconv (ours)": (lambda: envconv.disentangle(torchvision.models.resnet50()), "shrink", 1.0),
    "envconv, a fixed sigma": (lambda: envconv.disentangle(torchvision.models.resnet50(), method="fixed", sigma=0.7),
                               "shrink", 1.0),
    "kornia, a sigma per layer": (lambda: envconv.disentangle(torchvision.models.resnet50(), method="kornia-blur",
                                                              per_channel=False), None, 1.0),
    "kornia, a sigma per channel": (lambda: envconv.disentangle(torchvision.models.resnet50(), method="kornia-blur"),
                                    None, 1.0),
    "antialiased-cnns placement": (lambda: envconv.disentangle(torchvision.models.resnet50(), method="blurpool"),
                                   None, 1.0),
    "timm blur before the conv": (lambda: envconv.disentangle(torchvision.models.resnet50(), method="blur-before"),
                                  None, 1.0),
    "DCLS (9 taps in 5x5)": (lambda: envconv.disentangle(torchvision.models.resnet50(), method="dcls",
                                                         dilated_kernel_size=5, envelope_size=None), None, 0.4),
    "DCLS, kernels frozen (inference only)": (
        lambda: envconv.disentangle(torchvision.models.resnet50(), method="dcls", dilated_kernel_size=5,
                                    envelope_size=None), "frozen", 1.0),
    "antialiased_cnns.resnet50": (lambda: __import__("antialiased_cnns").resnet50(), None, 1.0),
    "timm resnetblur50": (lambda: __import__("timm").create_model("resnetblur50"), None, 1.0),
}


def _small(method: str, **options):
    return lambda: envconv.create_model("small_resnet20", num_classes=10, in_chans=1, method=method, **options)


#: The same rows on the study's own net (small_resnet20 on 1 x 28 x 28 Fashion-MNIST images, as the study builds them).
SMALL_ROWS: Dict[str, tuple] = {
    "envconv (ours)": (_small("gaussian"), "shrink", 1.0),
    "envconv, a fixed sigma": (_small("fixed", sigma=0.7), "shrink", 1.0),
    "envconv, a fixed sigma, 3 taps": (_small("fixed", sigma=0.7, envelope_size=3), None, 1.0),
    "antialiased-cnns placement": (_small("blurpool", envelope_size=None), None, 1.0),
    "timm blur before the conv": (_small("blur-before", envelope_size=None), None, 1.0),
    "DCLS (9 taps in 5x5)": (_small("dcls", envelope_size=None, dilated_kernel_size=5), None, 0.4),
    "DCLS, kernels frozen (inference only)": (_small("dcls", envelope_size=None, dilated_kernel_size=5), "frozen",
                                              1.0),
}


def models(batch: int, repeats: int, image: int = 224, only=None, log=print, net: str = "resnet50") -> List[dict]:
    """The model table: one row per entry of :data:`ROWS` (skipped, with the reason, when a package is missing).

    ``net="small_resnet20"``: the rows of :data:`SMALL_ROWS` against the plain small_resnet20 on
    1-channel ``image`` x ``image`` inputs.
    """
    torch.manual_seed(0)
    small = net == "small_resnet20"
    plain = (_small("none")() if small else torchvision.models.resnet50()).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1 if small else 3, image, image).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10 if small else 1000, (batch,))
    plain_memory = training_memory(plain, x, y)["total"]
    rows = []
    for name, (build, inference_form, factor) in (SMALL_ROWS if small else ROWS).items():
        if only and name not in only:
            continue
        try:
            model = build().to(memory_format=torch.channels_last)
        except ImportError as err:
            log(f"{name}: skipped ({err})")
            rows.append({"row": name, "skipped": str(err)})
            continue
        n = max(3, round(repeats * factor))
        if inference_form == "frozen":
            model = peers.freeze_dcls(model.eval())
            inference = paired_ratio(_inference(model, x), _inference(plain, x), repeats=n)
            rows.append({"row": name, "inference": inference.as_dict()})
            log(f"{name:30s} inference {inference}")
            continue
        if inference_form == "shrink":
            envconv.shrink(model, 3)
        inference = paired_ratio(_inference(model, x), _inference(plain, x), repeats=n)
        if inference_form == "shrink":
            envconv.shrink(model, 9)
        training = paired_ratio(_training_step(model, x, y), _training_step(plain, x, y), repeats=n)
        memory = training_memory(model, x, y)["total"] / plain_memory
        extra = sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in plain.parameters()) - 1
        rows.append({"row": name, "training_k9": training.as_dict(), "inference": inference.as_dict(),
                     "memory": memory, "extra_parameters": extra})
        log(f"{name:30s} training {training}  inference {inference}  memory {memory:.3f}x  params {extra:+.2%}")
    return rows


def _place_variants(channels: int = 128) -> Dict[str, Callable[[], nn.Module]]:
    def conv():
        torch.manual_seed(0)
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)

    build = envconv.methods.build_replacement
    return {
        "plain conv": conv,
        "envconv (ours)": lambda: build("gaussian", conv()),
        "kornia, a sigma per channel": lambda: build("kornia-blur", conv()),
        "antialiased-cnns placement": lambda: build("blurpool", conv()),
        "timm blur before the conv": lambda: build("blur-before", conv()),
        "DCLS (9 taps in 5x5)": lambda: build("dcls", conv(), dilated_kernel_size=5),
    }


def _layer_forward(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run():
        with torch.no_grad():
            module(x)
    return run


def _layer_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run():
        module(x).sum().backward()
    return run


def layer(batch: int, repeats: int, log=print) -> List[dict]:
    """The layer table at ResNet-50's ``layer2.0.conv2``: each replacement / the plain convolution."""
    x = torch.randn(batch, 128, 56, 56).contiguous(memory_format=torch.channels_last)
    variants = _place_variants()
    plain = variants.pop("plain conv")().to(memory_format=torch.channels_last)
    rows = []
    for name, build in variants.items():
        try:
            module = build().to(memory_format=torch.channels_last)
        except ImportError as err:
            rows.append({"row": name, "skipped": str(err)})
            continue
        fwd = paired_ratio(_layer_forward(module, x), _layer_forward(copy.deepcopy(plain), x), repeats=repeats)
        xs = x.clone().requires_grad_()
        fwd_bwd = paired_ratio(_layer_step(module, xs), _layer_step(plain, xs), repeats=repeats)
        rows.append({"row": name, "forward": fwd.as_dict(), "forward+backward": fwd_bwd.as_dict()})
        log(f"{name:30s} forward {fwd}  forward+backward {fwd_bwd}")
    return rows


def _cell(ratio: dict) -> str:
    return f"{ratio['median']:.3f}x [{ratio['q1']:.3f}-{ratio['q3']:.3f}]"


def markdown(result: dict) -> str:
    m = result["machine"]
    small = result.get("net") == "small_resnet20"
    net, size = ("small_resnet20", "1 x 28 x 28") if small else ("ResNet-50", "224 x 224")
    lines = [f"## envconv and its peers on {net} ({result['date']}, {m['cpu']}, {m['threads']} threads)", "",
             f"Converted / plain {net}, batch {result['batch']}, {size}, channels_last; median of paired "
             f"ratios [quartiles]; training at envconv's k_g = 9, inference with envconv shrunk to 3 taps.", "",
             "| row | training step | inference | training memory | extra parameters |", "|---|---|---|---|---|"]
    for r in result["models"]:
        if "skipped" in r:
            lines.append(f"| {r['row']} | skipped: {r['skipped']} | | | |")
            continue
        if "training_k9" not in r:  # an inference-only row
            lines.append(f"| {r['row']} | - | {_cell(r['inference'])} | - | - |")
            continue
        lines.append(f"| {r['row']} | {_cell(r['training_k9'])} | {_cell(r['inference'])} | {r['memory']:.3f}x | "
                     f"{r['extra_parameters']:+.1%} |")
    if not result["layer"]:
        return "\n".join(lines) + "\n"
    lines += ["", "At ResNet-50's `layer2.0.conv2` (128 channels, 56 x 56, 3 x 3 at stride 2), each replacement / the "
              "plain convolution:", "", "| row | forward | forward + backward |", "|---|---|---|"]
    for r in result["layer"]:
        if "skipped" in r:
            lines.append(f"| {r['row']} | skipped | |")
            continue
        lines.append(f"| {r['row']} | {_cell(r['forward'])} | {_cell(r['forward+backward'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny images, two rows, 2 repeats")
    p.add_argument("--save", action="store_true", help="write results/<date>-<machine>-peers.json and .md")
    p.add_argument("--net", choices=("resnet50", "small_resnet20"), default="resnet50",
                   help="small_resnet20: the study's net at its batch (128) on 28 x 28 images; no layer table")
    p.add_argument("--rows", nargs="+", metavar="ROW", help="measure only these rows of the model table (by name)")
    args = p.parse_args()
    known = set(SMALL_ROWS if args.net == "small_resnet20" else ROWS)
    if args.rows and not set(args.rows) <= known:
        p.error(f"unknown rows {sorted(set(args.rows) - known)}; the {args.net} rows are {sorted(known)}")
    import datetime

    if args.quick:
        args.batch = 2
        result_models = models(2, 2, image=64, only=["envconv (ours)", "timm blur before the conv"])
        result_layer = layer(1, 2)
    elif args.net == "small_resnet20":
        args.batch = 128 if args.batch == 8 else args.batch
        result_models, result_layer = models(args.batch, args.repeats, image=28, net=args.net, only=args.rows), []
    else:
        result_models = models(args.batch, args.repeats, only=args.rows)
        result_layer = layer(args.batch, args.repeats)
    info = machine_info()
    result = {"date": datetime.date.today().isoformat(), "batch": args.batch, "net": args.net,
              "machine": {"cpu": info["cpu"], "threads": info["threads"], "torch": info["torch"]},
              "models": result_models, "layer": result_layer}
    print(markdown(result))
    if args.save:
        cpu = "".join(c if c.isalnum() else "-" for c in info["cpu"].lower()).strip("-")
        small = "-small-resnet20" if args.net == "small_resnet20" else ""
        stem = Path(__file__).parent / "results" / f"{result['date']}-{cpu}-{info['threads']}t-peers{small}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        stem.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
