"""The ``envconv`` command line: one subcommand per recipe module.

This module only builds the parser and dispatches: each subcommand's arguments and its work
live in the recipe module named in :func:`get_args_parser` (``add_arguments`` / ``main``).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..version import __version__
from .signals import Terminated, stop_on_signals


def get_args_parser() -> argparse.ArgumentParser:
    """The ``envconv`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="envconv",
        description="Disentangled convolution (Gaussian envelope + discrete filter) for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"envconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from . import clips, demo, mnist1d, sigma_recovery, tables
    from .analysis import cli as analysis_cli
    from .study import cli as study_cli
    from .training import evaluation, probe, trainer

    # (name, module, (add_arguments, main) when not the module's own, help); the description is the first
    # line of the module's docstring, or of that main's
    commands = [
        ("train", trainer, None, "train a model from a YAML config (torchrun for several processes)"),
        ("eval", evaluation, None, "top-1/top-5 error of a checkpoint, optionally with shrunk envelopes"),
        ("probe", probe, None, "linear probe (Table 2): frozen features, a new linear classifier"),
        ("analyze", analysis_cli, None, "report what the envelopes learned: sigmas, envelopes, history, GradCAM, "
                                        "effective receptive fields"),
        ("study", study_cli, None, "the paper's comparisons as a resumable grid of seeded runs, with a report"),
        ("demo", demo, None, "train a small ResNet with and without envelopes on Fashion-MNIST"),
        ("sigma-demo", sigma_recovery, None, "learn a known envelope back from a teacher layer (seconds)"),
        ("clips", clips, None, "moving Fashion-MNIST clips: a 3-D CNN with a sigma per channel or per axis"),
        ("mnist1d", mnist1d, None, "MNIST-1D: the published CNN with 1-D envelopes and the peers, seeded, resumable"),
        ("envelopes", tables, (tables.add_arguments, tables.main),
         "the envelope table of a run, checkpoint, state dict or model name"),
        ("methods", tables, (tables.add_methods_arguments, tables.methods_main),
         "list the comparison methods with their extra parameters on a model"),
    ]
    for name, module, functions, text in commands:
        add_arguments, run = functions or (module.add_arguments, module.main)
        doc = (run if functions else module).__doc__.splitlines()[0]
        command = sub.add_parser(name, help=text, description=doc.replace("``", ""))  # plain text, not reST
        add_arguments(command)
        command.set_defaults(func=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``envconv`` with ``argv``; bad input ends with one line on stderr and exit code 2.

    Ctrl-C ends with 130, SIGTERM with 143 and SIGHUP with 129 (``128 +`` the signal), each after
    one line saying so.
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with stop_on_signals():  # SIGTERM / SIGHUP end any command as Ctrl-C does
            return args.func(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as err:
        # OSError: every operating-system failure (a full disk, a read-only or missing path, a name
        # too long), whose message names the path and the cause
        print(f"envconv {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Terminated as stop:
        print(f"envconv {args.command}: stopped by {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"envconv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
