"""Converted / plain speed ratios of this checkout, for comparing two versions of envconv in one session.

Runs in the process's envconv (point ``PYTHONPATH`` at another checkout's ``src`` to measure it):
ResNet-50 (batch 8, 224 x 224, channels_last) inference with the envelopes shrunk to 3 taps and a
training step at 9 taps, and ``r3d_18`` (clips 2 x 3 x 8 x 112 x 112, channels_last_3d) a training
step at 9 taps; paired, interleaved ratios (``benchmarks.timing``). Prints one JSON line. ``--layers``:
the forward + backward time of ``r3d_18``'s three kinds of converted layer alone. ``--stems``: a
converted stem / the plain stem conv (ResNet-50's on 8 x 3 x 224 x 224 and ResNet-20's on
32 x 3 x 28 x 28, k_g 9, both layouts), forward and a training step (input without gradient), and
``small_resnet20`` whole (batch 128 of 1 x 28 x 28), a training step and inference.

    PYTHONPATH=../old/src python -m benchmarks.before_after --label before
    python -m benchmarks.before_after --label after
"""

from __future__ import annotations

import argparse
import json

import torch
import torchvision

import envconv
from envconv.models import create_model

from .model_speed import _inference, _training_step
from .timing import paired_ratio


def _pair(build):
    torch.manual_seed(0)
    plain = build()
    converted = envconv.disentangle(build())
    converted.load_state_dict(plain.state_dict(), strict=False)
    return plain, converted


def measure(repeats: int = 7) -> dict:
    out = {"envconv": envconv.__file__, "threads": torch.get_num_threads()}
    plain, conv = _pair(lambda: torchvision.models.resnet50())
    x = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (8,))
    for m in (plain, conv):
        m.to(memory_format=torch.channels_last)
    envconv.shrink(conv, 3)
    out["resnet50_inference_k3"] = paired_ratio(_inference(conv, x), _inference(plain, x), repeats=repeats).as_dict()
    envconv.shrink(conv, 9)
    out["resnet50_training_k9"] = paired_ratio(_training_step(conv, x, y), _training_step(plain, x, y),
                                               repeats=repeats).as_dict()
    plain, conv = _pair(lambda: torchvision.models.video.r3d_18())
    clip = torch.randn(2, 3, 8, 112, 112).contiguous(memory_format=torch.channels_last_3d)
    for m in (plain, conv):
        m.to(memory_format=torch.channels_last_3d)
    out["r3d_18_training_k9"] = paired_ratio(_training_step(conv, clip, y[:2] % 400),
                                             _training_step(plain, clip, y[:2] % 400), repeats=repeats).as_dict()
    return out


def layers(steps: int = 15) -> dict:
    """Median seconds of a forward + backward of ``r3d_18``'s three kinds of converted layer (no pairing)."""
    import statistics
    import time

    torch.manual_seed(0)
    cases = {"stem": (envconv.DisentangledConv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                      (2, 3, 8, 112, 112)),
             "stage2 3x3x3": (envconv.DisentangledConv3d(64, 128, 3, stride=2, padding=1, bias=False),
                              (2, 64, 8, 56, 56)),
             "stage2 identity": (envconv.DisentangledConv3d(64, 128, 1, stride=2, bias=False), (2, 64, 8, 56, 56))}
    out = {}
    for name, (layer, shape) in cases.items():
        layer = layer.to(memory_format=torch.channels_last_3d)
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d).requires_grad_(name != "stem")
        times = []
        for i in range(steps + 2):
            start = time.perf_counter()
            layer(x).sum().backward()
            if i >= 2:  # two warm-up steps
                times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def _step(m, x):
    return lambda: m(x).sum().backward()


def stems(repeats: int = 7) -> dict:
    """Converted / plain ratios of a stem layer alone: forward (no grad) and forward + backward."""
    out = {}
    for name, (conv, shape) in {"resnet50": (lambda: torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False), (8, 3, 224, 224)),
                                "resnet20": (lambda: torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False), (32, 3, 28, 28))
                                }.items():
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            plain = conv().to(memory_format=layout)
            converted = envconv.DisentangledConv2d.from_conv(plain, envelope_size=9)
            x = torch.randn(shape).contiguous(memory_format=layout)

            tag = f"{name}_{'channels_last' if layout == torch.channels_last else 'nchw'}"
            out[f"{tag}_forward"] = paired_ratio(_inference(converted, x), _inference(plain, x),
                                                 repeats=repeats).as_dict()
            out[f"{tag}_step"] = paired_ratio(_step(converted, x), _step(plain, x), repeats=repeats).as_dict()
    return {**out, **small_net(repeats)}


def small_net(repeats: int = 9) -> dict:
    """Converted / plain ``small_resnet20`` (the study's net): a training step and inference, both layouts."""
    out = {}
    for name, layout in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        torch.manual_seed(0)
        plain = create_model("small_resnet20", num_classes=10, in_chans=1, method="none").to(memory_format=layout)
        conv = create_model("small_resnet20", num_classes=10, in_chans=1).to(memory_format=layout)
        x = torch.randn(128, 1, 28, 28).contiguous(memory_format=layout)
        y = torch.randint(0, 10, (128,))
        out[f"small_resnet20_{name}_step"] = paired_ratio(_training_step(conv, x, y), _training_step(plain, x, y),
                                                          repeats=repeats).as_dict()
        out[f"small_resnet20_{name}_inference"] = paired_ratio(_inference(conv, x), _inference(plain, x),
                                                               repeats=repeats).as_dict()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="this checkout")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--layers", action="store_true", help="time r3d_18's converted layers alone instead")
    p.add_argument("--stems", action="store_true", help="time a converted stem layer against the plain one instead")
    args = p.parse_args()
    if args.layers:
        result = {"layers_s": layers()}
    else:
        result = stems(args.repeats) if args.stems else measure(args.repeats)
    print(json.dumps({"label": args.label, **result}), flush=True)


if __name__ == "__main__":
    main()
