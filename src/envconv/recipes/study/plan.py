"""Study plans: a YAML grid of training runs (entries x seeds) over one base config.

A plan names a base config, overrides shared by every run, the seeds, and the entries; each
entry adds its own overrides. Run ``<entry>_seed<seed>`` trains
``base + plan.set + entry.set + train.seed=<seed>`` in ``OUT/<entry>_seed<seed>``. An
evaluation re-tests an entry's checkpoints with shrunk envelopes (Table 1e) without training.
Claims compare two entries (or evaluations) seed by seed; :mod:`envconv.recipes.study.report` gives
each a verdict.

Plan keys (``studies/fashion_mnist.yaml`` is the full example)::

    base: fashion_mnist_resnet20          # a config file (relative to the plan) or bundled name
    set: {train.epochs: 8}                # overrides for every run
    seeds: [0, 1, 2]
    baseline: none                        # the entry every difference is taken against
    probe: {dataset: digits, epochs: 100} # transfer probe of every run (omit or false: none)
    margin: 0.3                           # points: "no loss" claims hold inside +-margin
    entries:
      - {name: none, label: baseline, tables: [1a], paper: 23.81, set: {model.method: none}}
    evaluations:
      - {name: gaussian-k3, of: gaussian, envelope_size: 3, tables: [1e], paper: 22.98}
      - {name: gaussian-at-2x, of: gaussian, object_scale: 2.0, tables: [scale]}   # Fashion-MNIST on a canvas
      - {name: gaussian-bn, of: gaussian, recalibrate_bn: 20, tables: [bn]}  # BN statistics of 20 batches
    claims:
      - {table: 1a, text: envelopes lower the error, better: gaussian, than: none}
      - {table: 1e, text: 3 taps lose nothing, same: gaussian-k3, as: gaussian}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from ..config import PATH_KEYS, apply_overrides, find_config, load_config, validate_config, yaml_load

__all__ = ["Plan", "Entry", "Evaluation", "Claim", "Run", "load_plan", "bundled_plans", "PLAN_KEYS", "STUDY_DIR"]

PLAN_KEYS = ("base", "set", "seeds", "baseline", "probe", "margin", "entries", "evaluations", "claims", "name")
_ENTRY_KEYS = ("name", "label", "tables", "paper", "probe_paper", "set", "seeds")
_EVAL_KEYS = ("name", "of", "envelope_size", "object_scale", "recalibrate_bn", "label", "tables", "paper")
_CLAIM_KEYS = ("table", "text", "better", "than", "same", "as", "metric")
_PROBE_KEYS = ("dataset", "epochs", "lr", "batch_size", "weight_decay")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")


@dataclass
class Entry:
    """One trained setting: its overrides, the paper tables it belongs to and the paper's number."""

    name: str
    label: str
    tables: List[str]
    overrides: List[str]
    paper: Optional[float] = None
    probe_paper: Optional[List[float]] = None
    #: this entry's own seeds (``None``: the plan's)
    seeds: Optional[List[int]] = None


@dataclass
class Evaluation:
    """An entry's checkpoints evaluated again.

    With envelopes shrunk to ``envelope_size`` taps, or test objects at ``object_scale``
    (Fashion-MNIST on a canvas), or both; ``None`` leaves that as trained. ``recalibrate_bn``
    > 0 first recomputes the BatchNorm statistics over that many training batches.
    """

    name: str
    of: str
    envelope_size: Union[int, str, None]
    label: str
    tables: List[str]
    paper: Optional[float] = None
    object_scale: Optional[float] = None
    recalibrate_bn: int = 0


@dataclass
class Claim:
    """A statement of the paper: ``better`` has lower error than ``than``, or ``same`` matches ``as_``."""

    table: str
    text: str
    a: str
    b: str
    kind: str          # "better" | "same"
    metric: str = "test"  # "test" | "probe"


@dataclass
class Run:
    """One training run of the grid."""

    entry: Entry
    seed: int
    config: Dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.entry.name}_seed{self.seed}"


@dataclass
class Plan:
    """A study plan (:func:`load_plan`): one base config, shared overrides, the seeds and the entries.

    Attributes:
        path: the plan file.
        name: the plan's name (its runs go to ``results/study-<name>`` by default).
        base: the base config (a file relative to the plan, or a bundled name).
        overrides: ``key=value`` overrides of every run.
        seeds: the default seeds of every entry.
        baseline: the entry the others are compared with.
        entries: the trained settings; evaluations re-evaluate an entry's checkpoints; claims compare two of them.
        probe: the transfer probe of every run (None: none).
        margin: points within which a "no loss" claim holds.

    Example:
        >>> plan = load_plan("fashion_mnist")
        >>> [run.name for run in plan.runs("out")][:3]
        ['none_seed0', 'gaussian_seed0', 'single-sigma_seed0']
    """

    path: Path
    name: str
    base: str
    overrides: List[str]
    seeds: List[int]
    baseline: str
    entries: List[Entry]
    evaluations: List[Evaluation] = field(default_factory=list)
    claims: List[Claim] = field(default_factory=list)
    probe: Optional[Dict[str, Any]] = None
    margin: float = 0.3

    def entry_seeds(self, entry: Entry) -> List[int]:
        """The seeds ``entry`` is trained with: its own ``seeds``, else the plan's."""
        return entry.seeds if entry.seeds is not None else self.seeds

    def all_seeds(self) -> List[int]:
        """Every seed some entry is trained with, in first-mention order."""
        seeds = dict.fromkeys([*self.seeds, *(s for e in self.entries for s in self.entry_seeds(e))])
        return [s for s in seeds if any(s in self.entry_seeds(e) for e in self.entries)]

    def runs(self, out_dir: Union[str, Path], only: Optional[Sequence[str]] = None) -> List[Run]:
        """Every run of the grid with its full config: seed by seed, every entry within a seed.

        Seed-major order: a study stopped part-way has all settings at the seeds it finished.
        ``only`` restricts the grid to the named entries.

        Raises:
            ValueError: ``only`` names an entry the plan does not have.
        """
        names = [e.name for e in self.entries]
        unknown = sorted(set(only or ()) - set(names))
        if unknown:
            raise ValueError(f"plan {self.path}: no entry {', '.join(map(repr, unknown))}; entries: {', '.join(names)}")
        base = self.base_config()
        return [Run(entry, seed, self.run_config(base, entry, seed, out_dir))
                for seed in self.all_seeds() for entry in self.entries
                if seed in self.entry_seeds(entry) and (not only or entry.name in only)]

    def base_config(self) -> Dict[str, Any]:
        """The base config's own keys (a file relative to the plan, or a bundled name)."""
        return load_config(find_config(self.base, relative_to=self.path.parent))

    def run_config(self, base: Dict[str, Any], entry: Entry, seed: int, out_dir: Union[str, Path]) -> Dict[str, Any]:
        """The full, validated config of one run: base + plan set + entry set + seed, output in its directory."""
        overrides = [*self.overrides, *entry.overrides, f"train.seed={seed}",
                     f"output.dir={Path(out_dir) / f'{entry.name}_seed{seed}'}",
                     f"name={self.name}-{entry.name}_seed{seed}", "output.progress=off"]
        return validate_config(apply_overrides(base, overrides))


def _overrides(mapping: Any, where: str) -> List[str]:
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: 'set' must map config keys to values, e.g. {{model.method: none}}")
    return [f"{key}={_override_text(str(key), value)}" for key, value in mapping.items()]


def _override_text(key: str, value: Any) -> str:
    """The text of ``key=value`` that :func:`apply_overrides` reads back as ``value``, type and text kept.

    Paths and the run name are taken as raw text there, so a string goes as it is; every other
    value is written back as YAML (``"007"`` as ``'007'``, which YAML reads as the string again).
    """
    if (key == "name" or tuple(key.split(".")) in PATH_KEYS) and isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _seeds(seeds: Any, where: str) -> List[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"{where}: seeds must be a list of distinct integers, got {seeds!r}")
    return list(seeds)


def _check_keys(item: Any, allowed, where: str) -> Dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a mapping, got {item!r}")
    unknown = set(item) - set(allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    return item


def _tables(item: Dict[str, Any]) -> List[str]:
    tables = item.get("tables", [])
    return [str(t) for t in (tables if isinstance(tables, list) else [tables])]


def _name(item: Dict[str, Any], where: str, seen: set) -> str:
    name = str(item.get("name", ""))
    if not _NAME.match(name):
        raise ValueError(f"{where}: name {name!r} must be letters, digits, '.', '+' or '-' (it names directories)")
    if name in seen:
        raise ValueError(f"{where}: name {name!r} is used twice")
    seen.add(name)
    return name


#: The study plans shipped with envconv (``envconv study NAME`` finds them by name).
STUDY_DIR = Path(__file__).resolve().parents[1] / "studies"


def bundled_plans() -> List[str]:
    """The names of the shipped study plans.

    Example:
        >>> bundled_plans()
        ['fashion_mnist', 'fashion_mnist_scales']
    """
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def load_plan(path: Union[str, Path]) -> Plan:
    """Read and check a plan; every run's config is validated and its model built once per entry.

    ``path`` is a YAML file, or the name of a plan shipped with envconv (:func:`bundled_plans`,
    e.g. ``"fashion_mnist"``), so a study runs without a clone of the repository.

    Raises:
        FileNotFoundError: no such plan or base config.
        ValueError: an unknown key, method or option, naming the entry; a claim naming no entry.

    Example:
        >>> plan = load_plan("fashion_mnist")
        >>> plan.name, plan.baseline, len(plan.entry_seeds(plan.entries[0]))
        ('fashion_mnist', 'none', 10)
    """
    path = Path(path)
    if not path.is_file() and path.suffix == "" and len(path.parts) == 1 and (STUDY_DIR / f"{path}.yaml").is_file():
        path = STUDY_DIR / f"{path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no study plan {path} (a YAML file, or one of the bundled plans: "
                                f"{', '.join(bundled_plans())})")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"plan {path} is not valid YAML: {err}") from err
    data = _check_keys(data, PLAN_KEYS, f"plan {path}")
    for key in ("base", "seeds", "entries"):
        if key not in data:
            raise ValueError(f"plan {path} needs '{key}'")
    seeds = _seeds(data["seeds"], f"plan {path}")
    for key in ("entries", "evaluations", "claims"):
        if data.get(key) is not None and not isinstance(data[key], list):
            raise ValueError(f"plan {path}: {key} must be a list, got {data[key]!r}")
    plan_name = str(data.get("name", path.stem))
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", plan_name):
        raise ValueError(f"plan {path}: name {plan_name!r} must be letters, digits, '_', '.', '+' or '-' "
                         f"(it names a directory)")
    seen: set = set()
    entries = []
    for i, item in enumerate(data["entries"] or []):
        where = f"plan {path}, entry {i + 1} ({item.get('name', '?') if isinstance(item, dict) else item})"
        item = _check_keys(item, _ENTRY_KEYS, where)
        name = _name(item, where, seen)
        entry_seeds = _seeds(item["seeds"], where) if "seeds" in item else None
        entries.append(Entry(name, str(item.get("label", name)), _tables(item), _overrides(item.get("set"), where),
                             item.get("paper"), item.get("probe_paper"), entry_seeds))
    if not entries:
        raise ValueError(f"plan {path} has no entries")
    evaluations = []
    for i, item in enumerate(data.get("evaluations") or []):
        where = f"plan {path}, evaluation {i + 1}"
        item = _check_keys(item, _EVAL_KEYS, where)
        name = _name(item, where, seen)
        if item.get("of") not in {e.name for e in entries}:
            raise ValueError(f"{where} ({name}): 'of' must name an entry, got {item.get('of')!r}")
        size, scale, batches = item.get("envelope_size"), item.get("object_scale"), item.get("recalibrate_bn", 0)
        if size is None and scale is None and not batches:
            raise ValueError(f"{where} ({name}): give envelope_size, object_scale, recalibrate_bn or several")
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
            raise ValueError(f"{where} ({name}): recalibrate_bn must be a number of batches >= 0, got {batches!r}")
        if not (size is None or size == "auto" or (isinstance(size, int) and size >= 1 and size % 2 == 1)):
            raise ValueError(f"{where} ({name}): envelope_size must be an odd integer or 'auto', got {size!r}")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0):
            raise ValueError(f"{where} ({name}): object_scale must be a positive number, got {scale!r}")
        evaluations.append(Evaluation(name, item["of"], size, str(item.get("label", name)), _tables(item),
                                      item.get("paper"), None if scale is None else float(scale), batches))
    baseline = str(data.get("baseline", entries[0].name))
    if baseline not in {e.name for e in entries}:
        raise ValueError(f"plan {path}: baseline {baseline!r} is not an entry")
    claims = [_claim(item, i, path, seen) for i, item in enumerate(data.get("claims") or [])]
    probe = data.get("probe") or None
    if probe is not None:
        probe = dict(_check_keys(probe, _PROBE_KEYS, f"plan {path}, probe"))
        probe.setdefault("dataset", "digits")
    plan = Plan(path, plan_name, str(data["base"]), _overrides(data.get("set"), f"plan {path}"),
                list(seeds), baseline, entries, evaluations, claims, probe, float(data.get("margin", 0.3)))
    _check_entries(plan)
    return plan


def _claim(item: Any, i: int, path: Path, names: set) -> Claim:
    where = f"plan {path}, claim {i + 1}"
    item = _check_keys(item, _CLAIM_KEYS, where)
    if "better" in item and "than" in item:
        kind, a, b = "better", item["better"], item["than"]
    elif "same" in item and "as" in item:
        kind, a, b = "same", item["same"], item["as"]
    else:
        raise ValueError(f"{where}: give either 'better' and 'than', or 'same' and 'as'")
    for name in (a, b):
        if name not in names:
            raise ValueError(f"{where}: {name!r} is not an entry or evaluation of the plan")
    metric = item.get("metric", "test")
    if metric not in ("test", "probe"):
        raise ValueError(f"{where}: metric must be 'test' or 'probe', got {metric!r}")
    return Claim(str(item.get("table", "")), str(item.get("text", "")), str(a), str(b), kind, metric)


def _check_entries(plan: Plan) -> None:
    """Resolve every entry's config and build its model: bad keys, methods and options fail here, by entry."""
    from ..config import create_model_from_config

    base = plan.base_config()
    for entry in plan.entries:
        try:
            config = plan.run_config(base, entry, plan.seeds[0], "runs/check")
            create_model_from_config(config["model"])
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
            raise ValueError(f"plan {plan.path}, entry {entry.name!r}: {err}") from err
