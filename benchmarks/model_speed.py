"""Model level: a plain CNN vs the same CNN converted by ``envconv.disentangle``, same weights.

* inference: forward under ``torch.inference_mode`` with the envelopes shrunk to ``k_g = 3``
  (the paper's Table 1e setting);
* training step: forward, cross-entropy, backward and an SGD step (momentum 0.9,
  weight decay 1e-4) with ``k_g = 9``;
* memory of the training step;
* with ``--breakdown``: where the training step's extra time goes, from ``torch.profiler``
  (self time per operator and per step, plain vs converted; an attribution, not a ratio).
  Under the profiler the C++ envelope kernels ran several times slower than the same calls
  timed by the wall clock inside unprofiled steps (ResNet-50, batch 8, 2026-12-04: the
  backward kernel 95-210 ms per step profiled, 20-23 ms unprofiled): read their rows as upper bounds;
* with ``--compile``: the training step of both models under ``torch.compile`` (inductor),
  in the plain model's fastest layout; the envelopes stay ``envconv`` ops in the graph.

Both models run in the same memory layout; every layout is measured, and the headline is
the layout where the plain model is fastest. Times are paired ratios (converted / plain).

Memory: on CUDA, the allocator's peak (``torch.cuda.max_memory_allocated``). On CPU,
where PyTorch keeps no allocator statistics, the training step's memory is counted
exactly from the tensors it must hold: parameters, gradients, optimizer state, and every
tensor autograd saves for the backward pass (deduplicated by storage, through
``torch.autograd.graph.saved_tensors_hooks``) - the activation memory that makes the
peak. Transient workspaces inside single kernels are not in it.

    python -m benchmarks.model_speed [--model resnet50] [--batch 16] [--image-size 224] [--repeats 9]
                                     [--breakdown]
"""

from __future__ import annotations

import argparse
import copy
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

import envconv

from .timing import paired_ratio

MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _build(name: str, num_classes: int, in_chans: int):
    torch.manual_seed(0)
    plain = envconv.create_model(name, num_classes=num_classes, in_chans=in_chans, method="none")
    converted = envconv.disentangle(copy.deepcopy(plain), envelope_size=9)
    return plain, converted


def _training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, compiled: bool = False) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    forward = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()

    step.optimizer = opt
    return step


def _inference(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def forward():
        with torch.inference_mode():
            model(x)

    return forward


def training_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Dict[str, int]:
    """Bytes a training step holds at the start of backward (see the module docstring)."""
    step = _training_step(model, x, y)
    step()  # creates gradients and momentum buffers
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return {"peak_allocated": torch.cuda.max_memory_allocated()}
    saved: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    del loss
    def nbytes(ts):
        return sum(t.numel() * t.element_size() for t in ts)

    params = [p for p in model.parameters()]
    state = [v for s in step.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    counts = {"saved_for_backward": sum(saved.values()), "parameters": nbytes(params),
              "gradients": nbytes([p for p in params if p.requires_grad]), "optimizer_state": nbytes(state)}
    counts["total"] = sum(counts.values())
    return counts


def stem_training(plain: nn.Module, converted: nn.Module, x: torch.Tensor, repeats: int, sync) -> dict:
    """The stem layer's forward + backward (weight and sigma gradients; the image needs none),
    converted / plain: what learning the stem's envelope costs where it is most expensive."""
    name = envconv.convert.stem_name(plain)
    ours, theirs = converted.get_submodule(name), plain.get_submodule(name)
    # a dense incoming gradient in the input's layout, as BatchNorm's backward hands the stem in the model
    # (a .sum().backward() would hand it an expanded tensor of ones, which no model produces)
    with torch.no_grad():
        grad = torch.randn_like(theirs(x))

    def step(conv):
        def run():
            conv.zero_grad(set_to_none=True)
            conv(x).backward(grad)
        return run

    return paired_ratio(step(ours), step(theirs), repeats=repeats, sync=sync).as_dict()


def self_seconds(step: Callable[[], None], steps: int) -> Dict[str, float]:
    """Profiler self time per operator (seconds per step) of ``steps`` calls of ``step``.

    Self time excludes the operators an operator calls, so the values add up to the step's
    CPU time; an autograd Function's own entry holds the work it does outside aten operators
    (our C++ kernel). Host time only: on CUDA it shows launches, not kernel time.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()}


def breakdown(model_name: str = "resnet50", batch: int = 16, image_size: int = 224, steps: int = 3,
              rounds: int = 2, layout: str = "channels_last", num_classes: int = 1000, in_chans: int = 3,
              device: str = "cpu") -> List[dict]:
    """The training step's self time per operator, plain vs converted (k_g = 9), in seconds per step.

    The two models are profiled alternately for ``rounds`` rounds of ``steps`` steps, after a
    warm-up step each. Rows are sorted by the converted model's extra time, largest first, and
    the last row is the total.
    """
    fmt = MEMORY_FORMATS[layout]
    plain, converted = (m.to(device, memory_format=fmt) for m in _build(model_name, num_classes, in_chans))
    x = torch.randn(batch, in_chans, image_size, image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)
    steps_of = {"plain": _training_step(plain, x, y), "converted": _training_step(converted, x, y)}
    totals: Dict[str, Dict[str, float]] = {"plain": {}, "converted": {}}
    for step in steps_of.values():
        step()
    for _ in range(rounds):
        for name, step in steps_of.items():
            for op, sec in self_seconds(step, steps).items():
                totals[name][op] = totals[name].get(op, 0.0) + sec / rounds
    ops = set(totals["plain"]) | set(totals["converted"])
    rows = [{"op": op, "plain": totals["plain"].get(op, 0.0), "converted": totals["converted"].get(op, 0.0)}
            for op in ops]
    for row in rows:
        row["extra"] = row["converted"] - row["plain"]
    rows.sort(key=lambda r: -r["extra"])
    total = {k: sum(r[k] for r in rows) for k in ("plain", "converted", "extra")}
    return rows + [{"op": "total", **total}]


def breakdown_markdown(rows: List[dict], top: int = 8) -> str:
    """The ``top`` operators that cost the converted model the most extra time, the ``top`` that
    saved it the most, and the total, with each as a share of the plain step."""
    total = rows[-1]
    shown = [r for r in rows[:top] if r["extra"] > 0] + [r for r in rows[-1 - top:-1] if r["extra"] < 0]
    lines = ["| operator (self time) | plain s/step | converted s/step | extra | extra / plain step |",
             "|---|---|---|---|---|"]
    for r in shown + [total]:
        lines.append(f"| {r['op']} | {r['plain']:.3f} | {r['converted']:.3f} | {r['extra']:+.3f} | "
                     f"{r['extra'] / total['plain']:+.1%} |")
    return "\n".join(lines)


def compiled_training(model_name: str = "resnet50", batch: int = 16, image_size: int = 224, repeats: int = 9,
                      layout: str = "channels_last", num_classes: int = 1000, in_chans: int = 3, device: str = "cpu",
                      log=print) -> dict:
    """Converted / plain training step (k_g = 9), both under ``torch.compile``, in ``layout``."""
    fmt = MEMORY_FORMATS[layout]
    plain, converted = (m.to(device, memory_format=fmt) for m in _build(model_name, num_classes, in_chans))
    x = torch.randn(batch, in_chans, image_size, image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    steps = {name: _training_step(m, x, y, compiled=True) for name, m in (("plain", plain), ("converted", converted))}
    for name, step in steps.items():  # compiles (minutes on a small CPU)
        log(f"compiling the {name} training step ...")
        step()
    ratio = paired_ratio(steps["converted"], steps["plain"], repeats=repeats, sync=sync)
    log(f"{model_name} {layout} compiled training step k9 {ratio}  ({ratio.ms_a:.1f} vs {ratio.ms_b:.1f} ms)")
    return {"model": model_name, "batch": batch, "image_size": image_size, "device": device, "layout": layout,
            "compiled_training_step_k9": ratio.as_dict()}


def run(model_name: str = "resnet50", batch: int = 16, image_size: int = 224, repeats: int = 9,
        num_classes: int = 1000, in_chans: int = 3, layouts=("nchw", "channels_last"), device: str = "cpu",
        log=print) -> dict:
    plain, converted = _build(model_name, num_classes, in_chans)
    plain, converted = plain.to(device), converted.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    x = torch.randn(batch, in_chans, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    fmt = MEMORY_FORMATS
    result: Dict[str, dict] = {"model": model_name, "batch": batch, "image_size": image_size, "device": device,
                               "layouts": {}}
    plain_by_layout = {}
    for layout in layouts:
        for m in (plain, converted):
            m.to(memory_format=fmt[layout])
        xl = x.contiguous(memory_format=fmt[layout])
        envconv.shrink(converted, 3)
        inference = paired_ratio(_inference(converted, xl), _inference(plain, xl), repeats=repeats, sync=sync)
        plain_by_layout[layout] = (copy.deepcopy(plain), xl)
        envconv.shrink(converted, 9)
        training = paired_ratio(_training_step(converted, xl, y), _training_step(plain, xl, y), repeats=repeats,
                                sync=sync)
        mem_plain, mem_conv = training_memory(plain, xl, y), training_memory(converted, xl, y)
        key = "peak_allocated" if "peak_allocated" in mem_plain else "total"
        result["layouts"][layout] = {
            "inference_k3": inference.as_dict(),
            "training_step_k9": training.as_dict(),
            "memory": {"plain": mem_plain, "converted": mem_conv, "ratio": mem_conv[key] / mem_plain[key]},
        }
        result["layouts"][layout]["stem_training_k9"] = stem_training(plain, converted, xl, repeats, sync)
        log(f"{model_name} {layout:13s} inference k3 {inference}  ({inference.ms_a:.1f} vs {inference.ms_b:.1f} ms); "
            f"training step k9 {training}  ({training.ms_a:.1f} vs {training.ms_b:.1f} ms); "
            f"memory {mem_conv[key] / mem_plain[key]:.4f}x")
    if len(layouts) == 2:
        plain_layouts = paired_ratio(_inference(*plain_by_layout["channels_last"]),
                                     _inference(*plain_by_layout["nchw"]), repeats=repeats, sync=sync)
        result["plain_channels_last_over_nchw_inference"] = plain_layouts.as_dict()
        result["fastest_plain_layout"] = "channels_last" if plain_layouts.median < 1 else "nchw"
        log(f"plain {model_name} inference, channels_last / nchw: {plain_layouts}")
    return result


def markdown(result: dict) -> str:
    lines = [f"\n**{result['model']}, batch {result['batch']}, {result['image_size']}x{result['image_size']}, "
             f"{result['device']}** (converted / plain, median of paired ratios [quartiles])\n",
             "| layout | inference, k_g = 3 | training step, k_g = 9 | training memory |", "|---|---|---|---|"]
    for layout, r in result["layouts"].items():
        star = " (plain model's fastest)" if layout == result.get("fastest_plain_layout") else ""
        inf, tr = r["inference_k3"], r["training_step_k9"]
        lines.append(f"| {layout}{star} | {inf['median']:.3f}x [{inf['q1']:.3f}-{inf['q3']:.3f}] | "
                     f"{tr['median']:.3f}x [{tr['q1']:.3f}-{tr['q3']:.3f}] | {r['memory']['ratio']:.4f}x |")
    for layout, r in result["layouts"].items():
        stem = r["stem_training_k9"]
        lines.append(f"\nStem layer forward + backward, converted / plain ({layout}, k_g = 9): "
                     f"{stem['median']:.2f}x [{stem['q1']:.2f}-{stem['q3']:.2f}]")
    if "plain_channels_last_over_nchw_inference" in result:
        lines.append(f"\nPlain model inference, channels_last / NCHW: "
                     f"{result['plain_channels_last_over_nchw_inference']['median']:.3f}x")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save", action="store_true", help="also write results/<date>-<machine>-model.json and .md")
    p.add_argument("--compile", action="store_true",
                   help="instead: the training step of both models under torch.compile, in --layout")
    p.add_argument("--layout", default="channels_last", choices=list(MEMORY_FORMATS),
                   help="layout of --compile and --breakdown (default channels_last)")
    p.add_argument("--breakdown", action="store_true",
                   help="instead: profile the training step (channels_last) and print its extra time per operator")
    return p


def main(args: argparse.Namespace):
    if args.compile:
        result = compiled_training(args.model, args.batch, args.image_size, args.repeats, args.layout,
                                   device=args.device)
        r = result["compiled_training_step_k9"]
        print(f"\n**{args.model}, batch {args.batch}, {args.device}, {args.layout}, torch.compile**: training step "
              f"k_g = 9, converted / plain {r['median']:.3f}x [{r['q1']:.3f}-{r['q3']:.3f}]")
        return result
    if args.breakdown:
        rows = breakdown(args.model, args.batch, args.image_size, layout=args.layout, device=args.device)
        print(f"\n**{args.model}, batch {args.batch}, {args.image_size}x{args.image_size}, {args.device}, "
              f"{args.layout}**: training step (k_g = 9), profiler self time per step\n")
        print(breakdown_markdown(rows))
        return rows
    result = run(args.model, args.batch, args.image_size, args.repeats, device=args.device)
    print(markdown(result))
    if args.save:
        from .run_all import save

        save({"model": result}, "model", "## Model level\n" + markdown(result))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
