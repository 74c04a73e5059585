"""Third-party FLOP counters on torchvision's ResNet-50 at 224x224, plain and converted (k_g = 9 and 3).

    python -m benchmarks.flop_counters

Prints the table of ``docs/ecosystem.md`` (a test checks that the page holds what this prints):
each tool's count of the plain model, of the converted models with envconv's hooks
(:mod:`envconv.integrations.flops`), the increase, and each total's ratio to ``FlopCounterMode``'s. Counts
are of operations, not times, so they are the same on every machine.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Callable, Dict, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import envconv
from envconv.integrations import flops


def flop_counter_mode(model: nn.Module, x: torch.Tensor, hooks: bool = True) -> float:
    """PyTorch's count in multiply-adds (it counts 2 FLOPs per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


def fvcore(model, x, hooks):
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, x)
    if hooks:
        analysis = analysis.set_op_handle(**flops.fvcore_handles())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total()


def _ptflops(backend: str) -> Callable:
    def count(model, x, hooks):
        from ptflops import get_model_complexity_info

        with contextlib.redirect_stdout(io.StringIO()):
            macs, _ = get_model_complexity_info(model, tuple(x.shape[1:]), as_strings=False,
                                                print_per_layer_stat=False, backend=backend,
                                                custom_modules_hooks=flops.ptflops_hooks() if hooks else {})
        return macs
    return count


def thop(model, x, hooks):
    import thop as _thop

    with contextlib.redirect_stdout(io.StringIO()):
        return _thop.profile(model, (x,), custom_ops=flops.thop_ops() if hooks else {}, verbose=False)[0]


def torchinfo(model, x, hooks):
    import torchinfo as _torchinfo

    summary = flops.torchinfo_summary if hooks else _torchinfo.summary
    return summary(model, input_data=x, verbose=0).total_mult_adds


#: tool -> (package it needs, count(model, x, hooks) in multiply-adds)
TOOLS: Dict[str, Tuple[str, Callable]] = {
    "fvcore": ("fvcore", fvcore),
    "ptflops (pytorch)": ("ptflops", _ptflops("pytorch")),
    "ptflops (aten)": ("ptflops", _ptflops("aten")),
    "thop": ("thop", thop),
    "torchinfo": ("torchinfo", torchinfo),
}


def count(tool: str, model: nn.Module, x: torch.Tensor, hooks: bool) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tools warn about every op they skip
        return float(TOOLS[tool][1](model, x, hooks))


def resnet50s(sizes=(9, 3)):
    """The input and torchvision's ResNet-50, plain and converted at each envelope size."""
    torch.manual_seed(0)
    models = {"plain": torchvision_resnet50()}
    for size in sizes:
        models[size] = envconv.disentangle(torchvision_resnet50(), envelope_size=size).eval()
    return torch.randn(1, 3, 224, 224), models


def torchvision_resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50().eval()


def measure() -> Dict[str, Dict[str, float]]:
    """Per tool: counts of ``"plain"``, ``"9"`` and ``"3"`` (with envconv's hooks) and ``"9 bare"`` (without)."""
    x, models = resnet50s()
    counts = {"FlopCounterMode (torch)": {str(name): flop_counter_mode(m, x) for name, m in models.items()}}
    counts["FlopCounterMode (torch)"]["9 bare"] = counts["FlopCounterMode (torch)"]["9"]
    for tool, (package, _) in TOOLS.items():
        try:
            __import__(package)
        except ImportError:
            continue
        counts[tool] = {str(name): count(tool, m, x, hooks=name != "plain") for name, m in models.items()}
        counts[tool]["9 bare"] = count(tool, models[9], x, hooks=False)
    return counts


def table(counts: Dict[str, Dict[str, float]]) -> str:
    """The markdown table of :func:`measure`'s counts, in GMAC."""
    reference = counts["FlopCounterMode (torch)"]
    lines = ["| counter | plain | k_g = 9 | increase | k_g = 3 | increase | k_g = 9 / FlopCounterMode "
             "| increase without the hooks |",
             "|---|---|---|---|---|---|---|---|"]
    for tool, c in counts.items():
        lines.append(f"| {tool} | {c['plain'] / 1e9:.4f} | {c['9'] / 1e9:.4f} | {(c['9'] - c['plain']) / 1e9:+.4f} | "
                     f"{c['3'] / 1e9:.4f} | {(c['3'] - c['plain']) / 1e9:+.4f} | {c['9'] / reference['9']:.4f} | "
                     f"{(c['9 bare'] - c['plain']) / 1e9:+.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(measure()), end="")
