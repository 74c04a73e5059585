"""The package's layers (docs/design.md): a module imports, at module level, only from its own layer or below."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "envconv"

# Kept in step with the table in docs/design.md.
LAYERS = {
    0: {"version", "functional", "config", "checkpoint", "data", "machine", "_deprecation"},
    1: {"ops"},
    2: {"envelope", "conv", "methods", "sigma_recovery"},
    3: {"convert", "listing", "models"},
    4: {"training", "analysis"},
    5: {"study", "demo"},
    6: {"cli", "__init__", "__main__"},
}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}


def _unit(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _module_level_imports(path: Path, root: Path = PACKAGE):
    """The envconv units imported by the statements at the top of ``path`` (not inside functions)."""
    package = list(path.relative_to(root).parts[:-1])
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = [*base, *(node.module or "").split(".")]
            target = [t for t in target if t]
            yield from ([target[0]] if target else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("envconv."):
            yield node.module.split(".")[1]


def test_every_unit_of_the_package_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units - set(LAYER_OF) == set(), "add new modules to LAYERS and to docs/design.md"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_import_only_from_their_layer_or_below(path):
    unit = _unit(path)
    above = {u for u in _module_level_imports(path) if u in LAYER_OF and LAYER_OF[u] > LAYER_OF[unit]}
    assert not above, f"{path.relative_to(PACKAGE)} (layer {LAYER_OF[unit]}) imports {sorted(above)} from above"


def test_the_checker_sees_upward_imports_but_not_those_inside_functions(tmp_path):
    (tmp_path / "ops").mkdir()
    bad = tmp_path / "ops" / "bad.py"
    bad.write_text("from ..cli import main\nfrom . import library\nfrom envconv.study import plan\n"
                   "def f():\n    from ..training import train\n")
    assert list(_module_level_imports(bad, tmp_path)) == ["cli", "ops", "study"]
