"""The ``envconv`` command line: ``--version``, ``demo``, ``envelopes``, ``methods``.

Subcommands only parse arguments and call library functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from . import __version__


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]], min_width: int = 0) -> str:
    """Right-aligned plain-text table; columns at least ``min_width`` wide."""
    widths = [max(min_width, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

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

    result = run_demo(
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
    from .checkpoint import envelope_sigmas_from_file

    rows = [
        [name, str(s.numel()), f"{float(s.mean()):.4f}", f"{float(s.min()):.4f}", f"{float(s.max()):.4f}"]
        for name, s in envelope_sigmas_from_file(args.path).items()
    ]
    if not rows:
        print(f"{args.path}: no envelopes (no '*raw_sigma' entries in the state dict)")
        return 0
    print(_format_table(["layer", "sigmas", "mean", "min", "max"], rows))
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
    widths = [max(len(r[i]) for r in rows + [["method", "paper", "layers", "extra params", ""]]) for i in range(4)]
    header = ["method".ljust(widths[0]), "paper".ljust(widths[1]), "layers".rjust(widths[2]),
              "extra params".rjust(widths[3]), "what replaces the convolution"]
    print("  ".join(header))
    for r in rows:
        print("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3].rjust(widths[3]),
                         r[4]]))
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="envconv",
        description="Disentangled convolution (Gaussian envelope + discrete filter) for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"envconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="learn a known envelope back from a teacher layer")
    demo.add_argument("--sigma", type=float, nargs="+", default=[0.6, 1.3, 1.8],
                      help="teacher sigma per channel (default: 0.6 1.3 1.8)")
    demo.add_argument("--steps", type=int, default=400, help="optimisation steps (default: 400)")
    demo.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (default: 0.1)")
    demo.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    demo.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: 32)")
    demo.add_argument("--envelope-size", type=int, default=9, help="k_g of the envelopes (default: 9)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=_cmd_demo)

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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"envconv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
