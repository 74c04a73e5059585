"""``envconv study PLAN.yaml [--out DIR] [--only ENTRY ...] [--dry-run | --report [--docs DIR]]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .plan import load_plan
from .report import write_report
from .runner import dry_run, run_study

__all__ = ["add_arguments", "main", "default_out_dir"]


def default_out_dir(plan_name: str) -> Path:
    """``results/study-<plan>``: the runs' small result files are committed there (checkpoints are git-ignored)."""
    return Path("results") / f"study-{plan_name}"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv study``'s arguments to ``parser``."""
    parser.add_argument("plan", type=Path, help="a study plan (YAML), or the name of a bundled one "
                        "(fashion_mnist, also studies/fashion_mnist.yaml in a clone)")
    parser.add_argument("--out", type=Path, help="folder of the run directories (default: results/study-<plan name>)")
    parser.add_argument("--only", nargs="+", metavar="ENTRY", help="train only these entries of the plan")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the grid with each run's state and the "
                      "training time left (from finished epochs); train nothing")
    parser.add_argument("--estimate", action="store_true", help="with --dry-run: time a few training steps of "
                        "each entry without finished epochs (minutes)")
    mode.add_argument("--report", action="store_true", help="write the tables, plots and verdicts from the run "
                      "directories alone; train nothing")
    parser.add_argument("--docs", type=Path, help="with --report: where reproduction.md and reproduction/ go "
                        "(default: the --out folder)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines (the per-run lines stay)")
    return parser


def main(args: argparse.Namespace) -> int:
    """Run ``envconv study``: train what is missing, or ``--dry-run``, or ``--report``."""
    plan = load_plan(args.plan)
    out_dir = args.out or default_out_dir(plan.name)
    if args.docs and not args.report:
        raise ValueError("--docs applies to --report only")
    if args.estimate and not args.dry_run:
        raise ValueError("--estimate applies to --dry-run only")
    if args.dry_run:
        dry_run(plan, out_dir, estimate=args.estimate)
    elif args.report:
        written = write_report(plan, out_dir, args.docs or out_dir)
        print(f"wrote {written['markdown']} and {written['csv']} ({len(written['results'])} rows)")
    else:
        run_study(plan, out_dir, quiet=args.quiet, only=args.only)
        print(f"report: envconv study {args.plan} --out {out_dir} --report")
    return 0
