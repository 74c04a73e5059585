"""1-D and 3-D envelopes: layer and model speed, converted / plain, ratios measured in one run.

* layer: the envelope's forward + backward (input and sigma gradients, ``k_g = 9``) against
  ``x.clone()`` on the same tensor - the memory-traffic floor any filter pays - at the
  shapes of a 1-D audio CNN and of ``r3d_18``'s stem and strided places; one sigma per channel
  and one per axis;
* kernels: the C++ pass-per-axis kernel against the composite passes, forward and forward +
  backward, at strides 1 and 2, at those places and (a sigma per axis) at 2-D ones - the
  measurement behind the dispatch rule for 1-D, 3-D and per-axis envelopes;
* sizes: a size per axis, ``(3, 9, 9)`` and ``(1, 9, 9)`` (fewer taps in time) against ``(9, 9, 9)``,
  the envelope's forward + backward with ``impl="auto"`` and a sigma per axis at ``r3d_18``'s places;
* model: torchvision's ``r3d_18`` (clips ``(N, 3, T, H, W)``) and a 1-D CNN for raw audio
  (M5-style, :func:`audio_cnn`), plain vs converted by ``envconv.disentangle`` (the stem and the
  strided convolutions): inference with the envelopes shrunk to ``k_g = 3``, a training step
  with ``k_g = 9``, and the training step's memory (:func:`benchmarks.model_speed.training_memory`),
  in both layouts of each model; the headline is the plain model's fastest layout.

    python -m benchmarks.nd_speed [--quick] [--repeats 7] [--save] [--sizes-only]
"""

from __future__ import annotations

import argparse
import copy
from typing import Dict, List

import torch
import torchvision
from torch import nn

import envconv

from .model_speed import _inference, _training_step, training_memory
from .timing import paired_ratio

LAYOUTS = {3: {"ncl": torch.contiguous_format},
           4: {"nchw": torch.contiguous_format, "channels_last": torch.channels_last},
           5: {"ncdhw": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}}


def audio_cnn(num_classes: int = 35) -> nn.Sequential:
    """An M5-style 1-D CNN for 16 kHz raw audio (Dai et al. 2017): a wide strided stem, then pooled stages."""
    def block(cin, cout, k, stride):
        return [nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm1d(cout),
                nn.ReLU(inplace=True)]

    return nn.Sequential(*block(1, 32, 79, 4), nn.MaxPool1d(4), *block(32, 32, 3, 1), *block(32, 64, 3, 2),
                         *block(64, 64, 3, 1), *block(64, 128, 3, 2), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(128, num_classes))


def layer_shapes(quick: bool) -> Dict[str, tuple]:
    if quick:
        return {"audio stem (1-D)": (2, 1, 1600), "r3d_18 layer2 (3-D)": (1, 8, 4, 8, 8)}
    return {"audio stem (1-D)": (16, 1, 16000), "audio stage (1-D)": (16, 64, 1000),
            "r3d_18 stem (3-D)": (2, 3, 8, 112, 112), "r3d_18 layer2 (3-D)": (2, 64, 8, 56, 56),
            "r3d_18 layer4 (3-D)": (2, 256, 2, 14, 14)}


def planar_shapes(quick: bool) -> Dict[str, tuple]:
    """2-D places for the kernel table: with a sigma per axis they run the pass-per-axis kernel too."""
    if quick:
        return {"resnet layer2 (2-D)": (1, 16, 12, 12)}
    return {"resnet stem (2-D)": (8, 3, 224, 224), "resnet layer2 (2-D)": (4, 128, 56, 56)}


def _forward_backward(env: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def step():
        x.grad = env.raw_sigma.grad = None
        env(x).backward(grad)

    return step


def _clone(x: torch.Tensor):
    return lambda: x.detach().clone()


def layers(quick: bool = False, repeats: int = 7, log=print) -> List[dict]:
    rows = []
    for place, shape in layer_shapes(quick).items():
        dims = len(shape) - 2
        for layout, fmt in LAYOUTS[len(shape)].items():
            x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
            for per_axis in (False, True):
                env = envconv.GaussianEnvelope(shape[1], 9, spatial_dims=dims, per_axis=per_axis)
                grad = torch.randn(shape).contiguous(memory_format=fmt)

                ratio = paired_ratio(_forward_backward(env, x, grad), _clone(x), repeats=repeats)
                rows.append({"place": place, "shape": list(shape), "layout": layout, "per_axis": per_axis,
                             "ratio": ratio.as_dict()})
                log(f"{place:22s} {layout:16s} {'per axis' if per_axis else 'per channel':11s} "
                    f"forward+backward / clone {ratio}")
    return rows


def _envelope_call(x, raw, stride: int, impl: str, grad=None):
    """One envelope forward (``grad is None``) or forward + backward with ``impl`` forced (``k_g = 9``)."""
    dims = x.dim() - 2

    def run():
        if grad is None:
            with torch.no_grad():
                return envconv.functional.gaussian_envelope(x, raw, 9, "zeros", stride, impl, spatial_dims=dims)
        x.grad = raw.grad = None
        envconv.functional.gaussian_envelope(x, raw, 9, "zeros", stride, impl, spatial_dims=dims).backward(grad)

    return run


def kernel_choice(quick: bool = False, repeats: int = 5, log=print) -> List[dict]:
    """The C++ pass-per-axis kernel against the composite passes: forced ``cpp`` / ``separable``, one run.

    The measurement behind :func:`envconv.ops.dispatch._pass_per_axis_wins`; skipped (no rows)
    where the C++ kernel cannot be built.
    """
    if not envconv.ops.cpu.available():
        log(f"no C++ kernel ({envconv.ops.cpu.unavailable_reason()}): kernel choice not measured")
        return []
    rows = []
    shapes = {**layer_shapes(quick), **planar_shapes(quick)}
    for place, shape in shapes.items():
        dims = len(shape) - 2
        for layout, fmt in LAYOUTS[len(shape)].items():
            for per_axis, stride in ((False, 1), (True, 1), (False, 2), (True, 2)):
                if dims == 2 and not per_axis:  # one sigma per channel in 2-D: the two-pass ring kernel
                    continue
                x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
                raw = (torch.randn(shape[1], dims) if per_axis else torch.randn(shape[1])).requires_grad_()
                grad = _envelope_call(x, raw, stride, "separable")().contiguous(memory_format=fmt)
                forward = paired_ratio(_envelope_call(x, raw, stride, "cpp"),
                                       _envelope_call(x, raw, stride, "separable"), repeats=repeats)
                both = paired_ratio(_envelope_call(x, raw, stride, "cpp", grad),
                                    _envelope_call(x, raw, stride, "separable", grad), repeats=repeats)
                rows.append({"place": place, "shape": list(shape), "layout": layout, "per_axis": per_axis,
                             "stride": stride, "forward": forward.as_dict(), "forward_backward": both.as_dict()})
                log(f"{place:22s} {layout:16s} {'per axis' if per_axis else 'per channel':11s} stride {stride}: "
                    f"cpp / composite forward {forward}, forward+backward {both}")
    return rows


#: The per-axis sizes :func:`axis_sizes` compares with nine taps on every axis.
SIZES = ((3, 9, 9), (1, 9, 9))


def axis_sizes(quick: bool = False, repeats: int = 5, log=print) -> List[dict]:
    """Forward + backward with a size per axis / with 9 taps on every axis, at the 3-D places, in one run."""
    rows = []
    for place, shape in layer_shapes(quick).items():
        if len(shape) != 5:
            continue
        for layout, fmt in LAYOUTS[5].items():
            x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
            grad = torch.randn(shape).contiguous(memory_format=fmt)
            full = envconv.GaussianEnvelope(shape[1], 9, spatial_dims=3, per_axis=True)
            for sizes in SIZES:
                env = envconv.GaussianEnvelope(shape[1], sizes, spatial_dims=3, per_axis=True)
                ratio = paired_ratio(_forward_backward(env, x, grad), _forward_backward(full, x, grad),
                                     repeats=repeats)
                rows.append({"place": place, "shape": list(shape), "layout": layout, "sizes": list(sizes),
                             "ratio": ratio.as_dict()})
                log(f"{place:22s} {layout:16s} sizes {sizes} / (9, 9, 9) forward+backward {ratio}")
    return rows


def sizes_markdown(rows: List[dict]) -> str:
    lines = ["A size per axis / 9 taps on every axis (forward + backward, a sigma per axis, `impl=\"auto\"`):", "",
             "| place | shape | layout | sizes | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        q = r["ratio"]
        lines.append(f"| {r['place']} | {tuple(r['shape'])} | {r['layout']} | {tuple(r['sizes'])} | "
                     f"{q['median']:.2f}x [{q['q1']:.2f}-{q['q3']:.2f}] |")
    return "\n".join(lines)


def _model(name: str):
    torch.manual_seed(0)
    if name == "r3d_18":
        return torchvision.models.video.r3d_18(num_classes=400)
    return audio_cnn()


def models(quick: bool = False, repeats: int = 7, names=("r3d_18", "audio_cnn"), log=print) -> List[dict]:
    inputs = {"r3d_18": (2, 3, 8, 112, 112) if not quick else (1, 3, 4, 32, 32),
              "audio_cnn": (16, 1, 16000) if not quick else (2, 1, 1600)}
    rows = []
    for name in names:
        shape = inputs[name]
        plain = _model(name)
        converted = envconv.disentangle(copy.deepcopy(plain), envelope_size=9)
        classes = plain[-1].out_features if isinstance(plain, nn.Sequential) else plain.fc.out_features
        y = torch.randint(0, classes, (shape[0],))
        for layout, fmt in LAYOUTS[len(shape)].items():
            x = torch.randn(shape).contiguous(memory_format=fmt)
            if len(shape) == 5:  # Module.to takes 4-D or 5-D layouts only
                plain.to(memory_format=fmt)
                converted.to(memory_format=fmt)
            envconv.shrink(converted, 3)
            inference = paired_ratio(_inference(converted, x), _inference(plain, x), repeats=repeats)
            envconv.shrink(converted, 9)
            training = paired_ratio(_training_step(converted, x, y), _training_step(plain, x, y), repeats=repeats)
            mem = training_memory(converted, x, y)["total"] / training_memory(plain, x, y)["total"]
            rows.append({"model": name, "input": list(shape), "layout": layout, "inference_k3": inference.as_dict(),
                         "training_step_k9": training.as_dict(), "memory_ratio": mem, "plain_step_ms": training.ms_b})
            log(f"{name:10s} {layout:16s} inference k3 {inference}; training step k9 {training}; memory {mem:.4f}x")
    return rows


def kernel_markdown(rows: List[dict]) -> str:
    lines = ["C++ pass-per-axis kernel / composite passes (`impl=\"cpp\"` / `\"separable\"`, k_g = 9):", "",
             "| place | shape | layout | sigma | stride | forward | forward + backward |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f, b = r["forward"], r["forward_backward"]
        lines.append(f"| {r['place']} | {tuple(r['shape'])} | {r['layout']} | "
                     f"{'per axis' if r['per_axis'] else 'per channel'} | {r['stride']} | "
                     f"{f['median']:.2f}x [{f['q1']:.2f}-{f['q3']:.2f}] | "
                     f"{b['median']:.2f}x [{b['q1']:.2f}-{b['q3']:.2f}] |")
    return "\n".join(lines)


def markdown(layer_rows: List[dict], model_rows: List[dict]) -> str:
    lines = ["| model | input | layout | plain step (ms) | inference, k_g = 3 | training step, k_g = 9 | "
             "training memory |", "|---|---|---|---|---|---|---|"]
    for r in model_rows:
        inf, tr = r["inference_k3"], r["training_step_k9"]
        lines.append(f"| {r['model']} | {tuple(r['input'])} | {r['layout']} | {r['plain_step_ms']:.0f} | "
                     f"{inf['median']:.3f}x [{inf['q1']:.3f}-{inf['q3']:.3f}] | "
                     f"{tr['median']:.3f}x [{tr['q1']:.3f}-{tr['q3']:.3f}] | {r['memory_ratio']:.4f}x |")
    lines += ["", "Envelope forward + backward (k_g = 9) / `x.clone()` on the same tensor:", "",
              "| place | shape | layout | sigma | ratio to clone |", "|---|---|---|---|---|"]
    for r in layer_rows:
        q = r["ratio"]
        lines.append(f"| {r['place']} | {tuple(r['shape'])} | {r['layout']} | "
                     f"{'per axis' if r['per_axis'] else 'per channel'} | "
                     f"{q['median']:.1f}x [{q['q1']:.1f}-{q['q3']:.1f}] |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--save", action="store_true", help="also write results/<date>-<machine>-nd.json and .md")
    p.add_argument("--sizes-only", action="store_true",
                   help="only the size-per-axis table (saved as results/<date>-<machine>-nd-sizes.*)")
    return p


def main(args: argparse.Namespace) -> dict:
    if args.sizes_only:
        rows = axis_sizes(args.quick, args.repeats)
        text = sizes_markdown(rows)
        print(text)
        if args.save:
            from .run_all import save

            save({"sizes": rows}, "nd-sizes-quick" if args.quick else "nd-sizes",
                 "## A size per axis (3-D envelopes)\n\n" + text)
        return {"sizes": rows}
    layer_rows = layers(args.quick, args.repeats)
    kernel_rows = kernel_choice(args.quick, args.repeats)
    size_rows = axis_sizes(args.quick, args.repeats)
    model_rows = models(args.quick, args.repeats)
    text = markdown(layer_rows, model_rows) + ("\n\n" + kernel_markdown(kernel_rows) if kernel_rows else "")
    text += "\n\n" + sizes_markdown(size_rows)
    print(text)
    results = {"layers": layer_rows, "kernels": kernel_rows, "sizes": size_rows, "models": model_rows}
    if args.save:
        from .run_all import save

        save(results, "nd-quick" if args.quick else "nd",
             "## 1-D and 3-D envelopes\n\nModels, converted / plain (median of paired ratios [quartiles]):\n\n" + text)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
