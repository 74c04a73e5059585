"""The package's shape (docs/design.md): two halves, layers that import only downwards, no cycle.

The library (``envconv`` minus ``envconv.recipes``) imports only torch, numpy and the standard
library at module level, and never the recipes; inside the library a layer imports only from
its own layer or below. The whole package's import graph has no cycle. Run-directory file
names are spelt in ``envconv.recipes.rundir`` alone.
"""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "envconv"

# The library's layers, lowest first; kept in step with the table in docs/design.md.
LAYERS = {
    0: {"version", "kernels", "state_dict"},
    1: {"ops"},
    2: {"functional"},
    3: {"envelope", "conv", "pool"},
    4: {"methods"},
    5: {"convert"},
    6: {"listing", "models", "integrations"},
    7: {"__init__"},
}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}
#: Third-party modules the library may import at module level (triton comes with torch).
LIBRARY_DEPENDENCIES = {"torch", "numpy", "triton"}  # triton: ops/triton_kernels.py, imported when it runs
#: The run directory's file names (and name patterns): only envconv.recipes.rundir spells them.
RUN_FILES = ("config.yaml", "metrics.csv", "sigma.json", "summary.json", "last.pt", "best.pt", ".lock",
             ".study.lock", "study-run.json", "failed.json", "eval-", "probe-")


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = PACKAGE, module_level: bool = True):
    """``(absolute module, names)`` of the import statements of ``path``: at the top only, or everywhere."""
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".") if node.level else node.module
            yield module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _targets(path: Path, root: Path = PACKAGE, module_level: bool = True):
    """The package modules ``path`` imports (a ``from pkg import sub`` counts as importing ``pkg.sub``)."""
    modules = {_module_name(p, root) for p in root.rglob("*.py")}
    for module, names in _imports(path, root, module_level):
        subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
        yield from subs or ([module] if module in modules else [])


def _library_files():
    """The library half: everything but ``recipes/`` and ``__main__.py`` (``python -m envconv``, the CLI's door)."""
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if "recipes" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py")


def _unit(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _cycles(graph):
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def import_graph(root: Path = PACKAGE):
    """Module -> the package modules it imports (anywhere in the file, function bodies included)."""
    graph = defaultdict(set)
    for path in root.rglob("*.py"):
        source = _module_name(path, root)
        graph[source] |= {t for t in _targets(path, root, module_level=False) if t != source}
    return graph


def test_every_library_module_has_a_layer():
    units = {_unit(p) for p in _library_files()}
    assert units - set(LAYER_OF) == set(), "add new library modules to LAYERS and to docs/design.md"


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_modules_import_only_from_their_layer_or_below(path):
    unit = _unit(path)
    above = {t.split(".")[1] for t in _targets(path) if t.split(".")[1] in LAYER_OF
             and LAYER_OF[t.split(".")[1]] > LAYER_OF[unit]}
    assert not above, f"{path.relative_to(PACKAGE)} (layer {LAYER_OF[unit]}) imports {sorted(above)} from above"


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_never_imports_the_recipes(path):
    recipes = {t for t in _targets(path, module_level=False) if t.startswith("envconv.recipes")}
    assert not recipes, f"{path.relative_to(PACKAGE)} imports {sorted(recipes)}: the library must not use the recipes"


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_imports_only_torch_and_numpy_at_module_level(path):
    stdlib = set(sys.stdlib_module_names)
    third_party = {m.split(".")[0] for m, _ in _imports(path) if m and not m.startswith("envconv")} - stdlib
    assert third_party <= LIBRARY_DEPENDENCIES, f"{path.relative_to(PACKAGE)} imports {sorted(third_party)}"


def _private_torch_names(source: str):
    """Attribute chains and imports of ``source`` that reach a private torch name (``torch._C``, ``_foo``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id == "torch":
                names = chain[::-1]
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private and names != ["_check"] and names[:2] != ["ops", "envconv"]:  # envconv's own ops
                    found.append("torch." + ".".join(names))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
            parts = node.module.split(".") + [a.name for a in node.names]
            if any(p.startswith("_") and p != "__future__" for p in parts):
                found.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
    return sorted(n for n in set(found) if not any(m.startswith(n + ".") for m in found))  # longest chains


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_uses_no_private_pytorch_api(path):
    # torch._check (the documented shape check of custom ops' fake kernels) is the one exception
    assert _private_torch_names(path.read_text()) == []


def test_the_private_api_check_sees_one():
    source = ("import torch\nfrom torch._functorch.utils import x\ny = torch._C._is_fwd_grad_enabled()\n"
              "torch._check(1)\n")
    assert _private_torch_names(source) == ["from torch._functorch.utils import x", "torch._C._is_fwd_grad_enabled"]


def test_the_package_has_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_cycle(tmp_path):
    pkg = tmp_path / "envconv"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert _cycles(import_graph(pkg)) == [["envconv.a", "envconv.sub.b"]]


def test_import_envconv_loads_neither_yaml_nor_tqdm_nor_the_tool_adapters():
    # torch itself imports tqdm (torch.hub) when it is installed: count what envconv adds to torch's modules
    unwanted = "{'yaml', 'tqdm', 'envconv.integrations.flops', 'envconv.integrations.quantization'}"
    code = ("import sys, torch; before = set(sys.modules); import envconv; "
            f"print(sorted({unwanted} & (set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import envconv.integrations.flops, envconv.integrations.quantization; print('ok')"  # on demand
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"


def _code_strings(path: Path):
    """String constants of ``path`` that are code, not docstrings: ``(line, text)``."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_run_directory_file_names_are_spelt_in_rundir_alone():
    spelt = [f"{p.relative_to(PACKAGE)}:{line}: {text!r}" for p in sorted(PACKAGE.rglob("*.py"))
             if p.name != "rundir.py" for line, text in _code_strings(p)
             if any(name in text for name in RUN_FILES if name not in (".lock", "eval-", "probe-"))
             or any(text.startswith(prefix) for prefix in ("eval-", "probe-", ".lock"))]
    assert spelt == []
