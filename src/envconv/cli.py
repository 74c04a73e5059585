"""The ``envconv`` command line: ``train``, ``eval``, ``probe``, ``summary``, ``demo`` and helpers.

Subcommands only parse arguments and call library functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .version import __version__


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]], min_width: int = 0,
                  align: str = "") -> str:
    """Plain-text table, columns at least ``min_width`` wide.

    ``align`` holds "l" or "r" per column (right for columns it does not cover); a last
    column aligned "l" is not padded.
    """
    widths = [max(min_width, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    align = align.ljust(len(header), "r")

    def line(cells: Sequence[str]) -> str:
        text = "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align))
        return text.rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows])


def _envelope_table(rows) -> str:
    """The table of :func:`envconv.envelopes` rows printed by ``envconv summary`` and ``envconv envelopes``."""
    return _format_table(
        ["layer", "path", "channels", "k_g", "sigma mean", "min", "max"],
        [[r.name, r.path, str(r.channels), "-" if r.size is None else str(r.size), f"{r.sigma_mean:.4f}",
          f"{r.sigma_min:.4f}", f"{r.sigma_max:.4f}"] for r in rows], align="ll")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_demo, run_demo, study_spread

    print(f"Training small_resnet20 on Fashion-MNIST ({args.train_subset or 60000:,} training images, "
          f"{args.epochs} epochs) with Gaussian envelopes, then without; run directories under {args.out_dir}.")
    summaries = run_demo(args.out_dir, epochs=args.epochs, train_subset=args.train_subset or None, root=args.root,
                         extra=args.overrides)
    print(format_demo(summaries, study_spread()))
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


def _cmd_sigma_demo(args: argparse.Namespace) -> int:
    from .sigma_recovery import run_sigma_recovery

    sigma = args.sigma
    print(
        f"Teacher: Gaussian envelope (k_g={args.envelope_size}) with sigma = "
        f"{', '.join(f'{s:g}' for s in sigma)} per channel, then a fixed 3x3 conv.\n"
        f"Student: DisentangledConv2d with the teacher's 3x3 filter (frozen), raw sigma "
        f"initialised at 0; Adam lr={args.lr:g}, {args.steps} steps, batches of "
        f"{args.batch_size} random {args.image_size}x{args.image_size} images.\n"
    )
    header = ["step", "loss"] + [f"sigma[{c}]" for c in range(len(sigma))]
    print(_format_table(header, [], min_width=9))
    every = max(1, args.steps // 10)

    def report(step: int, loss: float, learned) -> None:
        if step == 1 or step % every == 0 or step == args.steps:
            cells = [str(step), f"{loss:.3e}"] + [f"{float(s):.4f}" for s in learned]
            print(_format_table(header, [cells], min_width=9).splitlines()[1], flush=True)

    result = run_sigma_recovery(
        sigma,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        image_size=args.image_size,
        envelope_size=args.envelope_size,
        seed=args.seed,
        callback=report,
    )
    print()
    rows = [
        [str(c), f"{t:.4f}", f"{s:.4f}", f"{100 * e:.3f}%"]
        for c, (t, s, e) in enumerate(zip(result.teacher_sigma, result.learned_sigma, result.relative_error))
    ]
    print(_format_table(["channel", "teacher", "learned", "rel. error"], rows))
    print(f"\nfinal loss {result.losses[-1]:.3e}; max relative sigma error {100 * max(result.relative_error):.3f}%")
    return 0


def _cmd_envelopes(args: argparse.Namespace) -> int:
    from .checkpoint import load_state_dict_file
    from .listing import envelopes

    rows = envelopes(load_state_dict_file(args.path))
    if not rows:
        print(f"{args.path}: no envelopes (no '*raw_sigma' entries in the state dict)")
        return 0
    print(_envelope_table(rows))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from .listing import envelopes
    from .models import create_model, model_from_checkpoint

    if args.checkpoint:
        model, ckpt = model_from_checkpoint(args.checkpoint)
        title = f"{args.checkpoint}: {ckpt['config']['model']['name']} ({ckpt['config']['model']['method']}), " \
                f"epoch {ckpt['epoch']}"
    else:
        model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, method=args.method)
        title = f"{args.model} ({args.method}), freshly initialised"
    rows = envelopes(model)
    print(f"{title}; {sum(p.numel() for p in model.parameters()):,} parameters")
    print(_envelope_table(rows) if rows else "no Gaussian envelopes")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from .conv import ConvVariant
    from .methods import METHODS
    from .models import create_model

    def build(method: str, **options):
        return create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans, method=method,
                            **options)

    base = sum(p.numel() for p in build("none").parameters())
    print(f"Comparison methods on {args.model} (num_classes={args.num_classes}, in_chans={args.in_chans}), "
          f"placed by where='downsample', stem='paper'; parameters counted on the built models.\n")
    rows = []
    for name, spec in METHODS.items():
        model = build(name, **({"sigma": 0.0} if name == "fixed" else {}))
        layers = sum(isinstance(m, ConvVariant) for m in model.modules())
        extra = sum(p.numel() for p in model.parameters()) - base
        rows.append([name, spec.reference, str(layers), f"{extra:,}", spec.summary])
    print(_format_table(["method", "paper", "layers", "extra params", "what replaces the convolution"], rows,
                        align="llrrl"))
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    """The ``envconv`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="envconv",
        description="Disentangled convolution (Gaussian envelope + discrete filter) for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"envconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="train a small ResNet with and without envelopes on Fashion-MNIST")
    demo.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    demo.add_argument("--train-subset", type=int, default=20000,
                      help="training images used (default: 20000; 0 for all 60000)")
    demo.add_argument("--root", help="folder of the Fashion-MNIST IDX files (default: Debian's "
                      "/usr/share/datasets/fashion-mnist)")
    demo.add_argument("--out-dir", default="runs/demo", help="where the two run directories go (default: runs/demo)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="further config overrides for both runs")
    demo.add_argument("--no-analysis", action="store_true", help="skip the closing analysis report "
                      "(envconv analyze of the two models, in OUT_DIR/analysis)")
    demo.set_defaults(func=_cmd_demo)

    demo = sub.add_parser("sigma-demo", help="learn a known envelope back from a teacher layer (seconds)")
    demo.add_argument("--sigma", type=float, nargs="+", default=[0.6, 1.3, 1.8],
                      help="teacher sigma per channel (default: 0.6 1.3 1.8)")
    demo.add_argument("--steps", type=int, default=400, help="optimisation steps (default: 400)")
    demo.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (default: 0.1)")
    demo.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    demo.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: 32)")
    demo.add_argument("--envelope-size", type=int, default=9, help="k_g of the envelopes (default: 9)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=_cmd_sigma_demo)

    env = sub.add_parser("envelopes", help="summarise the learned sigmas in a state dict or checkpoint file")
    env.add_argument("path", type=Path, help="a file written by torch.save(model.state_dict()) "
                     "or a checkpoint dict with a 'model' entry")
    env.set_defaults(func=_cmd_envelopes)

    methods = sub.add_parser("methods", help="list the comparison methods with their extra parameters on a model")
    methods.add_argument("--model", default="small_resnet20",
                         help="model name for create_model (default: small_resnet20; e.g. resnet50)")
    methods.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default: 10)")
    methods.add_argument("--in-chans", type=int, default=3, help="image channels (default: 3)")
    methods.set_defaults(func=_cmd_methods)

    from .analysis import cli as analysis_cli
    from .study import cli as study_cli
    from .training import evaluation, probe, trainer

    # (name, module with add_arguments / main, help); the description is the module's first doc line
    workflow = [
        ("train", trainer, "train a model from a YAML config (torchrun for several processes)"),
        ("eval", evaluation, "top-1/top-5 error of a checkpoint, optionally with shrunk envelopes"),
        ("probe", probe, "linear probe (Table 2): frozen features, a new linear classifier"),
        ("analyze", analysis_cli, "report what the envelopes learned: sigmas, envelopes, history, GradCAM, "
                                  "effective receptive fields"),
        ("study", study_cli, "the paper's comparisons as a resumable grid of seeded runs, with a report"),
    ]
    for name, module, text in workflow:
        command = sub.add_parser(name, help=text, description=module.__doc__.splitlines()[0])
        module.add_arguments(command)
        command.set_defaults(func=module.main)

    summary = sub.add_parser("summary", help="the envelope table of a checkpoint or a model name")
    what = summary.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="a checkpoint written by envconv train")
    what.add_argument("--model", help="a model name for create_model (freshly built)")
    summary.add_argument("--method", default="gaussian", help="with --model: the method (default gaussian)")
    summary.add_argument("--num-classes", type=int, default=1000, help="with --model (default 1000)")
    summary.add_argument("--in-chans", type=int, default=3, help="with --model (default 3)")
    summary.set_defaults(func=_cmd_summary)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``envconv`` with ``argv``; bad input ends with one line on stderr and exit code 2."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ImportError,
            FloatingPointError) as err:
        print(f"envconv {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"envconv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
