"""``envconv demo`` / ``make demo``: a small ResNet with and without envelopes on real Fashion-MNIST.

Both runs use the bundled ``fashion_mnist_resnet20`` config, shortened (a fixed random
subset of the training images, a few epochs) so that the pair finishes in a few minutes
on two CPU cores; the one difference is ``model.method`` (``gaussian`` vs ``none``). The
demo prints both test errors and the sigma each envelope learned.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import resolve_config
from .training.trainer import train

__all__ = ["DEMO_CONFIG", "run_demo", "format_demo"]

DEMO_CONFIG = "fashion_mnist_resnet20"


def run_demo(out_dir: str = "runs/demo", *, epochs: int = 2, train_subset: Optional[int] = 20000,
             root: Optional[str] = None, extra: List[str] = (), quiet: bool = False) -> Dict[str, Dict[str, Any]]:
    """Train the envelope model and its baseline; returns ``{"gaussian": summary, "none": summary}``.

    ``out_dir/gaussian`` and ``out_dir/none`` are replaced if they exist (demo runs are
    disposable). ``extra`` holds further ``key=value`` overrides for both runs.
    """
    summaries = {}
    for method in ("gaussian", "none"):
        run_dir = Path(out_dir) / method
        if run_dir.exists():
            shutil.rmtree(run_dir)
        overrides = [f"model.method={method}", f"train.epochs={epochs}", "train.warmup_epochs=0",
                     f"data.train_subset={'null' if train_subset is None else train_subset}",
                     f"output.dir={run_dir}", f"name=demo-{method}", *extra]
        if root is not None:
            overrides.append(f"data.root={root}")
        if not quiet:
            print(f"\n== {'with Gaussian envelopes' if method == 'gaussian' else 'baseline (no envelopes)'} ==",
                  flush=True)
        summaries[method] = train(resolve_config(DEMO_CONFIG, overrides), quiet=quiet)
    return summaries


def format_demo(summaries: Dict[str, Dict[str, Any]]) -> str:
    """The demo's closing report: test errors of both runs and the learned sigma per layer."""
    images = summaries["gaussian"]["final_val"]["images"]
    lines = ["", f"Fashion-MNIST test error ({images:,} test images):"]
    for method, label in (("gaussian", "with envelopes"), ("none", "baseline")):
        s = summaries[method]
        lines.append(f"  {label:15s} top-1 {s['final_val']['top1_err']:.2f}%  top-5 {s['final_val']['top5_err']:.2f}%"
                     f"  ({s['parameters']:,} parameters, {s['seconds']:.0f} s)")
    rows = summaries["gaussian"]["envelopes"]
    if rows:
        width = max(len(r["name"]) for r in rows)
        lines += ["", "Learned sigma per layer (started at 0.833):",
                  f"  {'layer'.ljust(width)}  channels  sigma mean    min    max"]
        lines += [f"  {r['name'].ljust(width)}  {r['channels']:8d}  {r['sigma_mean']:10.3f}  {r['sigma_min']:5.3f}  "
                  f"{r['sigma_max']:5.3f}" for r in rows]
    return "\n".join(lines)
