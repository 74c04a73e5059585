"""GPU benchmark: the paper's Table 1f on one CUDA GPU, and the layer table the CUDA dispatch rules come from.

Model level: torchvision ResNet-50, plain vs converted (envelopes at the paper's seven places),
at batch 64 and 256, fp32 and bf16 autocast, NCHW and channels_last; inference with
``k_g = 3`` and a training step (forward, cross-entropy, backward, SGD) with ``k_g = 9``. The
converted model runs once with the envelopes' current CUDA rules (``auto``) and once with the
Triton kernels forced. Times are paired alternating ratios (converted / plain) from CUDA
events; memory is ``torch.cuda.max_memory_allocated`` of one training step.

Layer level: the envelope forward and forward+backward at ResNet-50's seven places per
implementation - Triton, composite (ATen) and a full ``k x k`` depth-wise conv with autograd
(the naive alternative) - as time / time of ``x.clone()`` on the same tensor.

TF32 and cuDNN settings are left as the user has them, and recorded. Results go to
``benchmarks/results/<date>-<gpu>-gpu.json`` and ``.md``.

    python -m benchmarks.gpu                      # about 5 minutes on an H100-class GPU
    python -m benchmarks.gpu --device cpu --quick  # a smoke run of the plumbing (tests)
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

import envconv
from envconv import DisentangledConv2d
from envconv import kernels as EF

from .layer_speed import PLACES
from .timing import _time, cuda_event_time, paired_ratio

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def _autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _set_impl(model: torch.nn.Module, impl: str) -> None:
    for layer in model.modules():
        if isinstance(layer, DisentangledConv2d):
            layer.envelope.impl = impl


def _models(name: str, num_classes: int, image_size: int):
    torch.manual_seed(0)
    plain = envconv.create_model(name, num_classes=num_classes, method="none")
    return plain, envconv.disentangle(copy.deepcopy(plain), envelope_size=9)


def _inference(model, x, dtype):
    model.eval()

    def run():
        with torch.inference_mode(), _autocast(x.device, dtype):
            model(x)
    return run


def _train_step(model, x, y, dtype):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def run():
        opt.zero_grad(set_to_none=True)
        with _autocast(x.device, dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return run


def _peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during one step (CUDA), or 0 where the allocator keeps no statistics."""
    if device.type != "cuda":
        step()
        return 0
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def model_table(device: torch.device, batches, image_size: int, repeats: int, impls, model_name: str = "resnet50",
                num_classes: int = 1000, log=print) -> List[dict]:
    timer = cuda_event_time if device.type == "cuda" else _time
    plain, converted = (m.to(device) for m in _models(model_name, num_classes, image_size))
    rows = []
    for batch, precision, layout in itertools.product(batches, PRECISIONS, FORMATS):
        dtype = PRECISIONS[precision]
        for m in (plain, converted):
            m.to(memory_format=FORMATS[layout])
        x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=FORMATS[layout])
        y = torch.randint(0, num_classes, (batch,), device=device)
        for impl in impls:
            _set_impl(converted, impl)
            envconv.shrink(converted, 3)
            inf = paired_ratio(_inference(converted, x, dtype), _inference(plain, x, dtype), repeats=repeats,
                               timer=timer)
            envconv.shrink(converted, 9)
            conv_step, plain_step = _train_step(converted, x, y, dtype), _train_step(plain, x, y, dtype)
            train = paired_ratio(conv_step, plain_step, repeats=repeats, timer=timer)
            mem_c, mem_p = _peak_memory(conv_step, device), _peak_memory(plain_step, device)
            row = dict(batch=batch, precision=precision, layout=layout, impl=impl, inference_k3=inf.as_dict(),
                       training_step_k9=train.as_dict(), peak_bytes={"plain": mem_p, "converted": mem_c},
                       memory_ratio=(mem_c / mem_p) if mem_p else None)
            rows.append(row)
            log(f"batch {batch:4d} {precision} {layout:13s} {impl:6s} inference k3 {inf} ({inf.ms_a:.2f} vs "
                f"{inf.ms_b:.2f} ms); training k9 {train} ({train.ms_a:.1f} vs {train.ms_b:.1f} ms); memory "
                + (f"{row['memory_ratio']:.4f}x" if row["memory_ratio"] else "n/a"))
    return rows


def layer_table(device: torch.device, batch: int, repeats: int, impls, sizes=(9, 3), scale: int = 1,
                log=print) -> List[dict]:
    """time / time of x.clone() per implementation, forward and forward+backward, at the seven places."""
    timer = cuda_event_time if device.type == "cuda" else _time
    rows = []
    for (place, c, hw, stride), layout, size in itertools.product(PLACES, FORMATS, sizes):
        hw = max(hw // scale, 4)
        x = torch.randn(batch, c, hw, hw, device=device).contiguous(memory_format=FORMATS[layout])
        for mode in ("forward", "forward+backward"):
            train = mode == "forward+backward"
            variants = _layer_variants(x, size, stride, impls, train, needs_input_grad=place != "stem")
            clone = variants.pop("clone")
            for name, run in variants.items():
                ratio = paired_ratio(run, clone, repeats=repeats, timer=timer)
                rows.append(dict(place=place, shape=[c, hw, hw], stride=stride, size=size, layout=layout, mode=mode,
                                 impl=name, over_clone=ratio.as_dict(), ms=ratio.ms_a))
                log(f"{place:16s} {layout:13s} k={size} {mode:16s} {name:20s} {ratio.median:6.2f}x clone "
                    f"({ratio.ms_a:.3f} ms)")
    return rows


def _layer_variants(x: torch.Tensor, size: int, stride: int, impls, train: bool,
                    needs_input_grad: bool) -> Dict[str, Callable[[], None]]:
    """Callables timing each implementation (and the full k x k depth-wise conv, and ``x.clone()``) on ``x``."""
    c = x.shape[1]
    xg = x.detach().requires_grad_(train and needs_input_grad)
    rg = torch.zeros(c, device=x.device, requires_grad=train)

    def full():
        k = EF.gaussian_kernel1d(rg, size)
        weight = (k[:, :, None] * k[:, None, :]).unsqueeze(1)
        return F.conv2d(xg, weight, padding=size // 2, groups=c)[..., ::stride, ::stride]

    def timed(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run():
            out = fn()
            if train:
                out.backward(torch.ones_like(out))
        return run

    variants = {impl: timed(functools.partial(envconv.gaussian_envelope, xg, rg, size, stride=stride, impl=impl))
                for impl in impls}
    variants["full kxk depthwise"] = timed(full)
    variants["clone"] = x.clone
    return variants


def markdown(models: List[dict], layers: List[dict], settings: dict) -> str:
    lines = ["## Model level: torchvision ResNet-50, converted / plain (median of paired ratios [quartiles])\n",
             f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}\n",
             "| batch | precision | layout | envelope impl | inference k_g=3 | training step k_g=9 | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for r in models:
        inf, tr = r["inference_k3"], r["training_step_k9"]
        mem = f"{r['memory_ratio']:.4f}x" if r["memory_ratio"] else "n/a"
        lines.append(f"| {r['batch']} | {r['precision']} | {r['layout']} | {r['impl']} | {inf['median']:.3f}x "
                     f"[{inf['q1']:.3f}-{inf['q3']:.3f}] | {tr['median']:.3f}x [{tr['q1']:.3f}-{tr['q3']:.3f}] | "
                     f"{mem} |")
    impls = list(dict.fromkeys(r["impl"] for r in layers))
    for size, mode in itertools.product(sorted({r["size"] for r in layers}, reverse=True),
                                        ("forward", "forward+backward")):
        lines += [f"\n## Layer level, k_g = {size}, {mode}: time / time of x.clone()\n",
                  "| place | layout | " + " | ".join(impls) + " |", "|---|---|" + "---|" * len(impls)]
        keys = list(dict.fromkeys((r["place"], r["layout"]) for r in layers if r["size"] == size))
        for place, layout in keys:
            cells = {r["impl"]: f"{r['over_clone']['median']:.2f}" for r in layers
                     if (r["place"], r["layout"], r["size"], r["mode"]) == (place, layout, size, mode)}
            lines.append(f"| {place} | {layout} | " + " | ".join(cells.get(i, "-") for i in impls) + " |")
    return "\n".join(lines)


def settings(device: torch.device) -> dict:
    out = {"device": str(device)}
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    return out


def main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device here; use --device cpu --quick for a smoke run")
    if args.quick:
        batches, image_size, repeats, layer_batch, scale = [2], 32, 1, 1, 8
        impls = ["auto", "separable"] if device.type != "cuda" else ["auto", "triton"]
    else:
        batches, image_size, repeats, layer_batch, scale = args.batches, 224, args.repeats, 64, 1
        impls = ["auto", "triton"]
    layer_impls = ["triton", "separable"] if device.type == "cuda" else ["separable"]
    info = settings(device)
    models = model_table(device, batches, image_size, repeats, impls)
    layers = layer_table(device, layer_batch, repeats, layer_impls, scale=scale)
    text = markdown(models, layers, info)
    print(text)
    result = {"settings": info, "model": models, "layers": layers}
    if not args.no_save:
        from .run_all import save

        result["written"] = str(save(result, "gpu" + ("-quick" if args.quick else ""), text))
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: tests the plumbing")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-save", action="store_true", help="print only; write no results file")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
