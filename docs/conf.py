"""Sphinx configuration of envconv's documentation (``make docs`` -> build/docs).

Sphinx with autodoc + napoleon reads the Google-style docstrings, as kornia and torchvision
do; MyST lets the pages be Markdown like the rest of the repository. ``make docs`` runs with
``-W -n``: a warning or a broken cross-reference fails the build.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))

import envconv  # noqa: E402

project = "envconv"
author = "envconv contributors"
copyright = "2026, envconv contributors"
release = version = envconv.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser", "envconv_docs"]
# Formulas become MathML at build time (docs/_ext/envconv_docs.py): no MathJax from a CDN, so the
# site shows its equations offline and opened from disk.
html_math_renderer = "mathml"
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_ext", "analysis-example/report.html", "nd/clips.md"]  # included by nd.md
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# No network at build time (no intersphinx): references to other libraries' types are not links.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|nn|np|numpy|F|argparse|pathlib|os|typing|collections|dataclasses|matplotlib|tqdm|yaml)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Path|PathLike|Any|Callable|Dict|List|Optional|Sequence|Mapping|Tuple|Union|Iterable)"),
    (r"py:.*", r"(int|float|str|bool|dict|list|tuple|None|object|type|bytes)"),
    (r"py:.*", r"(Where|Number|EpochStats|Figure|TextIO|Iterator|ndarray|Document|Result|Run|Plan|Claim)"),
]

html_theme = "furo"
html_title = f"envconv {release}"
html_static_path = []
