"""Run configuration: YAML files, ``--set key=value`` overrides, validation and dumping.

A config is a nested dict with the sections of :data:`DEFAULTS`. Files are read with
:func:`yaml_load` (PyYAML's safe loader, so no code is ever executed, that also reads
``1e-3`` as a number) and merged over the defaults; a file may
name a ``base`` config (a path relative to itself, or a bundled config name) that it
extends, so a baseline twin is three lines. Every key is checked: a misspelt key is an
error naming the section's keys, not a silently ignored setting.

Example:
    >>> cfg = resolve_config("fashion_mnist_resnet20", ["train.epochs=2", "model.method=none"])
    >>> cfg["train"]["epochs"], cfg["model"]["method"]
    (2, 'none')
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

__all__ = ["DEFAULTS", "CONFIG_DIR", "PATH_KEYS", "yaml_load", "bundled_configs", "find_config", "load_config",
           "apply_overrides",
           "resolve_config", "validate_config", "dump_config"]

class _Loader(yaml.SafeLoader):
    """The safe loader, reading floats as YAML 1.2 does: ``1e-3`` and ``5.0e-4`` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no tags that build objects), with scientific notation read as floats."""
    return yaml.load(text, Loader=_Loader)


#: Keys holding paths: ``--set`` keeps their text as it is (no YAML parsing, so ``#``, ``: ``
#: and spaces stay part of the path); ``null`` or an empty value unsets them.
PATH_KEYS = {("output", "dir"), ("data", "root"), ("data", "train"), ("data", "val")}

#: Where the bundled YAML configs live (the repository's ``configs/`` links here).
CONFIG_DIR = Path(__file__).parent / "configs"

#: Every key a config may have, with its default. ``None`` means "not set".
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "model": {
        "name": "small_resnet20",   # envconv, torchvision or timm name (envconv.create_model)
        "num_classes": 10,
        "in_chans": 3,
        "model_kwargs": {},          # passed to the model constructor
        "method": "gaussian",        # envconv.disentangle options
        "where": "downsample",
        "stem": "paper",
        "envelope_size": None,       # None: the method's default (9 for gaussian)
        "order": None,
        "shared_sigma": False,
        "options": {},               # method options, e.g. {sigma_init: 0.0}
    },
    "data": {
        "dataset": "fashion_mnist",  # fashion_mnist | imagefolder | digits (scikit-learn's 8x8) | synthetic
        "root": None,                # fashion_mnist: folder with the IDX .gz files (None: Debian's path)
        "train": None,               # imagefolder: training folder (one sub-folder per class)
        "val": None,                 # imagefolder: validation folder
        "train_subset": None,        # use only this many training images (a fixed random subset)
        "val_subset": None,
        "augment": "crop-flip",      # none | crop-flip (pad + random crop, flip) | imagenet (RandomResizedCrop)
        "image_size": 28,            # training / evaluation crop
        "crop_padding": 2,           # crop-flip: zero padding before the random crop
        "eval_resize": None,         # imagefolder: resize the short side to this, then centre-crop image_size
        "mean": [0.2860],
        "std": [0.3530],
        "workers": 2,
        "synthetic_size": [512, 128],  # synthetic: training / validation images
    },
    "train": {
        "epochs": 30,
        "batch_size": 128,           # global batch, summed over all processes
        "lr": 0.1,                   # learning rate for a batch of base_batch_size ...
        "base_batch_size": 256,      # ... scaled linearly to batch_size (Goyal et al.)
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "sigma_weight_decay": False,  # weight decay on the envelopes' raw sigma
        "norm_weight_decay": True,    # weight decay on normalisation weights / biases and conv biases
        "schedule": "step",          # step | cosine
        "step_size": 30,             # step: epochs between divisions
        "gamma": 0.1,                # step: the factor
        "warmup_epochs": 0,          # W epochs of linear warm-up: epoch e <= W at lr * e / (W + 1)
        "label_smoothing": 0.0,
        "seed": 0,
        "device": "auto",            # auto | cpu | cuda | cuda:N
        "amp": "none",               # none | bf16 | fp16 (fp16 needs CUDA)
        "dtype": "float32",          # float32 | float64 (parameters and images; float64 to compare trajectories)
        "channels_last": False,
        "compile": False,
        "eval_every": 1,             # evaluate every N epochs (and after the last)
        "log_every": 50,             # steps between checks of the loss (and progress updates)
    },
    "output": {
        "dir": "runs/{name}",        # run directory; {name} is the config's name
        "progress": "auto",          # auto (on a TTY, rank 0) | on | off
        "tensorboard": True,         # write TensorBoard scalars when tensorboard is installed
    },
}

_CHOICES = {
    ("data", "dataset"): ("fashion_mnist", "imagefolder", "digits", "synthetic"),
    ("data", "augment"): ("none", "crop-flip", "imagenet"),
    ("train", "schedule"): ("step", "cosine"),
    ("train", "amp"): ("none", "bf16", "fp16"),
    ("train", "dtype"): ("float32", "float64"),
    ("output", "progress"): ("auto", "on", "off"),
}
# Keys whose values are free-form mappings (not checked key by key).
_FREE_MAPPINGS = {("model", "model_kwargs"), ("model", "options")}


def bundled_configs() -> List[str]:
    """Names of the configs shipped with envconv (``configs/*.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name_or_path: Union[str, os.PathLike], relative_to: Optional[Path] = None) -> Path:
    """The file for a config path, or for a bundled config name such as ``"imagenet_resnet50"``."""
    path = Path(name_or_path)
    candidates = [path] if path.is_absolute() else [(relative_to or Path.cwd()) / path, path]
    candidates += [CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no config file {os.fspath(name_or_path)!r}; "
                            f"bundled configs: {', '.join(bundled_configs())}")


def _merge(base: Dict[str, Any], update: Dict[str, Any], where: str = "") -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict) and (where, key) not in _FREE_MAPPINGS:
            out[key] = _merge(out[key], value, key)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: Union[str, os.PathLike], _seen: Sequence[Path] = ()) -> Dict[str, Any]:
    """Read a YAML config file (following ``base``), merged over nothing: only the file's keys.

    Raises:
        FileNotFoundError: no such file or bundled config.
        ValueError: the file is not YAML mapping, or its ``base`` chain loops.
    """
    file = find_config(path).resolve()
    if file in _seen:
        raise ValueError(f"config {file} extends itself through 'base'")
    try:
        data = yaml_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {file} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config {file} must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    data.setdefault("name", file.stem)
    if base is None:
        return data
    parent = load_config(find_config(base, relative_to=file.parent), (*_seen, file))
    parent.pop("name", None)
    return _merge(parent, data)


def _parse_value(text: str) -> Any:
    # YAML scalars: 0.1 -> float, true -> bool, null -> None, [1, 2] -> list; anything else stays a string.
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(config: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML, paths kept as text) and return a new config."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form section.key=value (e.g. train.epochs=10)")
        parts = key.strip().split(".")
        if parts == ["name"]:
            config["name"] = text
            continue
        node = config
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        if tuple(parts) in PATH_KEYS:
            node[parts[-1]] = None if text.strip() in ("", "null", "~") else text
        else:
            node[parts[-1]] = _parse_value(text)
    return config


def validate_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Merge ``config`` over :data:`DEFAULTS` and check every key and choice; returns the full config."""
    unknown = set(config) - set(DEFAULTS) - {"name"}
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; sections are {sorted(DEFAULTS)} and 'name'")
    for section, values in config.items():
        if section == "name":
            continue
        if not isinstance(values, dict):
            raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
        bad = set(values) - set(DEFAULTS[section])
        if bad:
            raise ValueError(f"unknown key(s) {sorted(bad)} in section {section!r}; "
                             f"its keys are {', '.join(DEFAULTS[section])}")
    full = {"name": str(config.get("name", "run")),
            **_merge(DEFAULTS, {k: v for k, v in config.items() if k != "name"})}
    progress = full["output"]["progress"]
    if isinstance(progress, bool):  # YAML reads a bare on / off as a boolean
        full["output"]["progress"] = "on" if progress else "off"
    for (section, key), allowed in _CHOICES.items():
        if full[section][key] not in allowed:
            raise ValueError(f"{section}.{key} must be one of {allowed}, got {full[section][key]!r}")
    for section, key in _FREE_MAPPINGS:
        if not isinstance(full[section][key], dict):
            raise ValueError(f"{section}.{key} must be a mapping, got {full[section][key]!r}")
    train = full["train"]
    for key in ("epochs", "batch_size", "base_batch_size", "step_size", "eval_every", "log_every"):
        if not isinstance(train[key], int) or isinstance(train[key], bool) or train[key] < 1:
            raise ValueError(f"train.{key} must be a positive integer, got {train[key]!r}")
    for key in ("lr", "momentum", "weight_decay", "gamma", "label_smoothing", "warmup_epochs"):
        value = train[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"train.{key} must be a non-negative number, got {value!r}")
    data = full["data"]
    if len(data["mean"]) != len(data["std"]) or any(s <= 0 for s in data["std"]):
        raise ValueError(f"data.mean and data.std need one entry per channel, std > 0; "
                         f"got {data['mean']}, {data['std']}")
    return full


def resolve_config(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Load ``path`` (a file or a bundled name), apply ``overrides`` and validate: the run's full config."""
    return validate_config(apply_overrides(load_config(path), overrides))


def dump_config(config: Dict[str, Any]) -> str:
    """The config as YAML text (sections in :data:`DEFAULTS` order)."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
