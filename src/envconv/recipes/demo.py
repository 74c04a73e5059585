"""``envconv demo`` / ``make demo``: a small ResNet with and without envelopes on real Fashion-MNIST.

Both runs use the bundled ``fashion_mnist_resnet20`` config, shortened (a fixed random
subset of the training images, a few epochs) so that the pair finishes in a few minutes
on two CPU cores; the one difference is ``model.method`` (``gaussian`` vs ``none``). The
learning rate follows a cosine annealed to zero step by step over the run, so both final
models are settled rather than caught mid-schedule. The demo prints both test errors beside
the seed-to-seed spread the study measured (a single short pair cannot show that envelopes
help) and the sigma each envelope learned.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .arguments import positive_int
from .config import resolve_config
from .training.trainer import train

__all__ = ["DEMO_CONFIG", "STUDY_RESULTS", "run_demo", "format_demo", "study_spread", "study_pace",
           "expected_minutes", "add_arguments", "main"]

DEMO_CONFIG = "fashion_mnist_resnet20"
#: The study's results, relative to the working directory: a clone's root, where ``make demo`` runs
#: (``envconv demo --study-results PATH`` reads another; ``envconv study ... --report --docs docs`` writes it).
STUDY_RESULTS = Path("docs") / "reproduction" / "results.csv"


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
                     "train.schedule=cosine", "train.schedule_per_step=true",
                     f"data.train_subset={'null' if train_subset is None else train_subset}",
                     f"output.dir={run_dir}", f"name=demo-{method}", *extra]
        if root is not None:
            overrides.append(f"data.root={root}")
        if not quiet:
            print(f"\n== {'with Gaussian envelopes' if method == 'gaussian' else 'baseline (no envelopes)'} ==",
                  flush=True)
        summaries[method] = train(resolve_config(DEMO_CONFIG, overrides), quiet=quiet)
    return summaries


def _training_rows(path: Path) -> Optional[List[Tuple[str, Dict[str, str]]]]:
    """``(entry, row)`` of the study's training rows of ``gaussian`` and ``none`` in ``results.csv`` (None without it).

    Evaluation rows of a checkpoint (``k_g = 3`` at inference) have no training time and are left out.
    """
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [(row["run"].rsplit("_seed", 1)[0], row) for row in csv.DictReader(f)]
    return [(entry, row) for entry, row in rows if entry in ("gaussian", "none") and row["train_seconds"]]


def study_spread(path: Path = STUDY_RESULTS) -> Optional[Dict[str, Any]]:
    """The seed-to-seed spread of ours vs none in the study's ``results.csv`` (None without one).

    Returns the number of paired seeds, the runs' epochs, each entry's standard deviation of the
    test error and the mean and standard deviation of the paired difference ours - none.
    """
    from .study.stats import paired_difference, summarize

    rows = _training_rows(path)
    if rows is None:
        return None
    errors: Dict[str, Dict[int, float]] = {"gaussian": {}, "none": {}}
    epochs = set()
    for entry, row in rows:
        errors[entry][int(row["seed"])] = float(row["test_top1_err"])
        epochs.add(int(row["epochs"]))
    seeds = sorted(set(errors["gaussian"]) & set(errors["none"]))
    if len(seeds) < 2:
        return None
    diff = summarize([errors["gaussian"][s] - errors["none"][s] for s in seeds])
    paired = paired_difference({s: errors["gaussian"][s] for s in seeds}, {s: errors["none"][s] for s in seeds})
    return {"n": len(seeds), "epochs": sorted(epochs), "diff_mean": diff.mean, "diff_std": diff.std,
            "low": paired.low, "high": paired.high,
            "std": {k: summarize([v[s] for s in seeds]).std for k, v in errors.items()}}


def study_pace(path: Path = STUDY_RESULTS) -> Optional[Dict[str, float]]:
    """Median seconds per epoch of 20,000 images (training and its evaluation) of ours and of none in the study.

    ``None`` without the study's ``results.csv``. The study trains the demo's model and data on
    2-core CPUs (``docs/reproduction.md`` names the machines).
    """
    import statistics

    rows = _training_rows(path)
    if rows is None:
        return None
    pace: Dict[str, List[float]] = {"gaussian": [], "none": []}
    for entry, row in rows:
        pace[entry].append(float(row["train_seconds"]) / int(row["epochs"]))
    return {k: statistics.median(v) for k, v in pace.items()} if all(pace.values()) else None


def expected_minutes(epochs: int, train_subset: Optional[int], pace: Optional[Dict[str, float]]) -> Optional[float]:
    """The demo's two runs at the study's pace, in minutes (``None`` without a pace)."""
    if pace is None:
        return None
    return sum(pace.values()) * epochs * (train_subset or 60000) / 20000 / 60


def _spread_lines(gap: float, spread: Optional[Dict[str, Any]]) -> List[str]:
    lines = ["", f"Envelopes - baseline: {gap:+.2f} points in this one pair of short runs."]
    if spread is None:
        return lines + [f"No study results here to compare it with ({STUDY_RESULTS}; --study-results PATH reads "
                        f"another); one pair of runs shows the pipeline, not whether envelopes help."]
    noise = 2 * spread["diff_std"]
    lines += [f"The study ({spread['n']} seeds of {'/'.join(map(str, spread['epochs']))}-epoch runs, "
              f"docs/reproduction.md) measured test errors varying by {spread['std']['gaussian']:.2f} (envelopes) "
              f"and {spread['std']['none']:.2f} (baseline) points (std) between seeds, and a paired difference "
              f"{spread['diff_mean']:+.2f} ± {spread['diff_std']:.2f} points "
              f"(95% interval [{spread['low']:+.2f}, {spread['high']:+.2f}])."]
    if abs(gap) < noise:
        lines.append(f"This gap is within twice that spread ({noise:.2f} points): it says nothing about envelopes. "
                     f"What this run shows is the training pipeline, the sigmas learned and the analysis report.")
    else:
        lines.append(f"This gap exceeds twice that spread ({noise:.2f} points), but it is one pair of short runs; "
                     f"the seeded comparison is docs/reproduction.md.")
    return lines


def format_demo(summaries: Dict[str, Dict[str, Any]], spread: Optional[Dict[str, Any]] = None) -> str:
    """The demo's closing report: test errors of both runs beside the study's spread, the learned sigmas."""
    images = summaries["gaussian"]["final_val"]["images"]
    lines = ["", f"Fashion-MNIST test error ({images:,} test images):"]
    for method, label in (("gaussian", "with envelopes"), ("none", "baseline")):
        s = summaries[method]
        lines.append(f"  {label:15s} top-1 {s['final_val']['top1_err']:.2f}%  top-5 {s['final_val']['top5_err']:.2f}%"
                     f"  ({s['parameters']:,} parameters, {s['seconds']:.0f} s)")
    lines += _spread_lines(summaries["gaussian"]["final_val"]["top1_err"] - summaries["none"]["final_val"]["top1_err"],
                           spread)
    rows = summaries["gaussian"]["envelopes"]
    if rows:
        width = max(len(r["name"]) for r in rows)
        lines += ["", "Learned sigma per layer (started at 0.833):",
                  f"  {'layer'.ljust(width)}  channels  sigma mean    min    max"]
        lines += [f"  {r['name'].ljust(width)}  {r['channels']:8d}  {r['sigma_mean']:10.3f}  {r['sigma_min']:5.3f}  "
                  f"{r['sigma_max']:5.3f}" for r in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv demo``'s arguments to ``parser``."""
    parser.add_argument("--epochs", type=positive_int, default=2, help="epochs per run (default: 2)")
    parser.add_argument("--train-subset", type=positive_int, default=20000,
                        help="training images used (default: 20000; 0 for all 60000)")
    parser.add_argument("--root", help="folder of the Fashion-MNIST IDX files (default: Debian's "
                        "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--out-dir", default="runs/demo", help="where the two run directories go (default: runs/demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="further config overrides for both runs")
    parser.add_argument("--no-analysis", action="store_true", help="skip the closing analysis report "
                        "(envconv analyze of the two models, in OUT_DIR/analysis)")
    parser.add_argument("--study-results", type=Path, default=STUDY_RESULTS,
                        help=f"the study's results.csv to compare with (default: {STUDY_RESULTS}, "
                        f"relative to the working directory)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run ``envconv demo``: both runs, the closing report and the analysis report."""
    print(f"Training small_resnet20 on Fashion-MNIST ({args.train_subset or 60000:,} training images, "
          f"{args.epochs} epochs) with Gaussian envelopes, then without; run directories under {args.out_dir}.")
    minutes = expected_minutes(args.epochs, args.train_subset or None, study_pace(args.study_results))
    if minutes is None:
        print("(no study results here to estimate the time from; a line every 30 s says how it goes)")
    else:
        amount = f"about {minutes:.0f} min" if minutes >= 1 else "under a minute"
        print(f"Expected: at most {amount} of training (the study's median pace, {args.study_results}: "
              f"one thread per run, two runs sharing 2 cores; one run alone goes faster), then the analysis "
              f"report. A line every 30 s says how it goes.", flush=True)
    summaries = run_demo(args.out_dir, epochs=args.epochs, train_subset=args.train_subset or None, root=args.root,
                         extra=args.overrides)
    print(format_demo(summaries, study_spread(args.study_results)))
    if args.no_analysis:
        return 0
    from .analysis import analyze
    from .analysis.report import erf_summary

    out = Path(args.out_dir) / "analysis"
    print("\nWriting the analysis report (sigmas, envelopes, GradCAM, effective receptive fields) ...", flush=True)
    try:
        result = analyze(Path(args.out_dir) / "gaussian", compare=Path(args.out_dir) / "none", data=args.root,
                         out=out)
    except ImportError as err:
        print(f"no analysis report: {err}")
        return 0
    print("\n".join(f"  {line}" for line in erf_summary(result)))
    print(f"analysis report: {out / 'report.html'} (also report.md)")
    return 0
