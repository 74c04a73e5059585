"""Sphinx directives that generate envconv's reference pages from the code, and its concept figures.

- ``envconv-config``: the config reference, from :data:`envconv.recipes.config.DEFAULTS` and the comments
  beside its keys in ``config.py`` (nothing typed twice).
- ``envconv-cli``: the ``--help`` of ``envconv`` and of every subcommand, from the argparse parsers.
- ``envconv-methods``: the comparison methods, from :data:`envconv.METHODS`.
- Figures: ``make_figures(outdir)`` draws the Concepts page's figures with envconv itself.
- Math: the ``mathml`` renderer turns every formula into MathML at build time (``latex2mathml``),
  which browsers draw natively: the site needs no script and no network to show its equations.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Tuple

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]


def config_reference() -> List[Tuple[str, str, str, str]]:
    """``(section, key, default, comment)`` for every key of DEFAULTS, comments read from config.py's source."""
    from envconv.recipes import config

    comments: Dict[Tuple[str, str], str] = {}
    section = None
    last = None
    source = inspect.getsource(config).split("DEFAULTS: Dict", 1)[1].split("\n}\n", 1)[0]
    for line in source.splitlines():
        if m := re.match(r'^    "(\w+)": \{', line):
            section = m.group(1)
        elif m := re.match(r'^        "(\w+)": .*?(?:#\s*(.*))?$', line):
            last = (section, m.group(1))
            comments[last] = (m.group(2) or "").strip()
        elif (m := re.match(r"^\s+#\s*(.*)$", line)) and last:
            comments[last] += " " + m.group(1).strip()
    rows = []
    for sec, keys in config.DEFAULTS.items():
        for key, default in keys.items():
            choices = config._CHOICES.get((sec, key))
            note = comments.get((sec, key), "")
            if choices and not all(c in note for c in choices):
                note = f"{note} (one of {', '.join(choices)})".strip()
            rows.append((sec, key, repr(default) if isinstance(default, str) else str(default), note))
    return rows


def cli_help() -> List[Tuple[str, str]]:
    """``(command, help text)`` for ``envconv`` and each subcommand, at a fixed width."""
    os.environ["COLUMNS"] = "100"
    from envconv.recipes.cli import get_args_parser

    parser = get_args_parser()
    pages = [("envconv", parser.format_help())]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    pages += [(f"envconv {name}", command.format_help()) for name, command in sub.choices.items()]
    return pages


class _Generated(SphinxDirective):
    """Parse generated Markdown as if it stood in the (MyST) page."""

    def render(self, lines: List[str]) -> List[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="<envconv_docs>"), self.content_offset, container)
        return container.children


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else " "


class ConfigReference(_Generated):
    def run(self):
        lines: List[str] = []
        rows = config_reference()
        for section in dict.fromkeys(s for s, *_ in rows):
            lines += [f"**{section}**", "", "| key | default | meaning |", "|---|---|---|"]
            lines += [f"| `{sec}.{key}` | `{default}` | {_cell(note)} |" for sec, key, default, note in rows
                      if sec == section]
            lines.append("")
        return self.render(lines)


class CliReference(_Generated):
    def run(self):
        lines: List[str] = []
        for command, text in cli_help():
            lines += [f"**{command}**", "", "```text", *text.rstrip().splitlines(), "```", ""]
        return self.render(lines)


class MethodsTable(_Generated):
    def run(self):
        from envconv import METHODS

        lines = ["| method | paper | what replaces the convolution |", "|---|---|---|"]
        lines += [f"| `{name}` | {_cell(spec.reference)} | {_cell(spec.summary)} |" for name, spec in METHODS.items()]
        return self.render(lines)


def make_figures(outdir: Path) -> None:
    """The Concepts page's figures, drawn by envconv: envelopes at several sigmas, the placement, a sigma plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import envconv
    from envconv.recipes.analysis import envelope_kernel1d, envelope_kernel2d
    from envconv.recipes.analysis.plots import plot_sigmas
    from envconv.recipes.rundir import RunDir

    outdir.mkdir(parents=True, exist_ok=True)
    sigmas = (0.3, float(envconv.kernels.sigma2_from_raw(torch.zeros(1)).sqrt()), 1.5, 2.5)
    fig, axes = plt.subplots(2, len(sigmas), figsize=(2.2 * len(sigmas), 4.2))
    for j, sigma in enumerate(sigmas):
        axes[0, j].imshow(envelope_kernel2d(sigma, 9), cmap="viridis", vmin=0)
        axes[0, j].set_title(f"σ = {sigma:.2f}", fontsize=9)
        axes[0, j].axis("off")
        axes[1, j].bar(range(-4, 5), envelope_kernel1d(sigma, 9), color="tab:blue")
        axes[1, j].set_ylim(0, 1)
        axes[1, j].tick_params(labelsize=7)
    fig.suptitle("Gaussian envelopes at k_g = 9 (eq. 9): 2-D (top) and 1-D taps (bottom)", fontsize=10)
    fig.tight_layout()
    fig.savefig(outdir / "envelopes.png", dpi=100)
    plt.close(fig)

    model = envconv.disentangle(envconv.create_model("resnet50", method="none"))
    block = model.layer2[0]
    paths = {"residual": ["conv1", "conv2", "conv3"], "identity": ["downsample.0"]}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for x, (path, names) in zip((0.3, 0.75), paths.items()):
        ax.text(x, 0.95, f"{path} path", ha="center", fontsize=10, weight="bold")
        for i, name in enumerate(names):
            conv = block.get_submodule(name)
            enveloped = isinstance(conv, envconv.DisentangledConv2d)
            label = (f"layer2.0.{name}\n{conv.kernel_size[0]}x{conv.kernel_size[1]} conv, stride {conv.stride[0]}, "
                     f"{conv.in_channels}->{conv.out_channels}" + ("\n+ envelope g(σ_c), k_g = 9" if enveloped else ""))
            ax.text(x, 0.78 - 0.25 * i, label, ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round", "fc": "#ffd27f" if enveloped else "#e6e6e6", "ec": "black"})
    ax.text(0.5, 0.02, "torchvision ResNet-50 after envconv.disentangle: orange = DisentangledConv2d", ha="center",
            fontsize=8)
    ax.axis("off")
    fig.savefig(outdir / "placement.png", dpi=100)
    plt.close(fig)

    run = ROOT / "results" / "fashion_mnist_resnet20"
    fig = plot_sigmas(RunDir(run).envelopes(), "fashion_mnist_resnet20 (results/): sigma per channel")
    fig.savefig(outdir / "sigmas.png", dpi=100)
    plt.close(fig)


def make_readme_figure(path: Path) -> None:
    """The README's figure: the Concepts page's envelopes."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_figures(Path(tmp))
        shutil.copyfile(Path(tmp) / "envelopes.png", path)


def _on_builder_inited(app) -> None:
    make_figures(Path(app.srcdir) / "_generated")


def _mathml(latex: str, display: str, node) -> str:
    from latex2mathml.converter import convert

    try:
        return convert(latex, display=display)
    except Exception as err:  # a formula latex2mathml cannot read must fail the (-W) build, not show raw TeX
        from sphinx.util import logging as sphinx_logging

        sphinx_logging.getLogger(__name__).warning(f"cannot convert the formula {latex!r} to MathML: {err}",
                                                   location=node)
        return f"<code>{latex}</code>"


def _visit_math(self, node):
    self.body.append(_mathml(node.astext(), "inline", node))
    raise nodes.SkipNode


def _visit_math_block(self, node):
    if node.get("label"):
        self.body.append(f'<span class="eqno">({node["number"]})</span>')
    self.body.append(f'<div class="math" style="overflow-x: auto; overflow-y: hidden; padding: 0.3em 0">'
                     f'{_mathml(node.astext(), "block", node)}</div>')
    raise nodes.SkipNode


def setup(app):
    # the figures convert models; the conversion's INFO lines are for users' logs, not the build's output
    logging.getLogger("envconv").setLevel(logging.WARNING)
    app.add_html_math_renderer("mathml", (_visit_math, None), (_visit_math_block, None))
    app.add_directive("envconv-config", ConfigReference)
    app.add_directive("envconv-cli", CliReference)
    app.add_directive("envconv-methods", MethodsTable)
    app.connect("builder-inited", _on_builder_inited)
    return {"parallel_read_safe": True, "version": "1"}


if __name__ == "__main__":  # python docs/_ext/envconv_docs.py: redraw the README's figure
    make_readme_figure(ROOT / "docs" / "readme-envelopes.png")
