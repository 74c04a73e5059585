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
from torch import nn

from ..models import create_model
from . import peers  # noqa: F401  (registers the peer libraries as comparison methods)

__all__ = ["DEFAULTS", "CONFIG_DIR", "PATH_KEYS", "yaml_load", "bundled_configs", "find_config", "load_config",
           "apply_overrides",
           "resolve_config", "validate_config", "dump_config", "create_model_from_config"]

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


#: The keys holding paths. ``--set`` keeps their text as it is (no YAML parsing, so ``#``, ``: ``
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
        "image_size": 28,            # training / evaluation crop (fashion_mnist: the canvas, >= 28 * object_scale)
        "object_scale": 1.0,         # fashion_mnist: each garment resized by this, at a seeded place on the canvas
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
        "lr": 0.1,                   # learning rate for a batch of base_batch_size, scaled linearly to batch_size
        "base_batch_size": 256,      # the batch lr is given for (linear scaling, Goyal et al.)
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "sigma_weight_decay": False,  # weight decay on the envelopes' raw sigma
        "sigma_lr_scale": 1.0,        # the envelopes' raw sigma learn at lr times this (DCLS-style own rate)
        "norm_weight_decay": True,    # weight decay on normalisation weights / biases and conv biases
        "schedule": "step",          # step | cosine
        "schedule_per_step": False,  # move the lr after every step (cosine then ends at 0), not every epoch
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
        "recalibrate_bn": 0,         # before each evaluation, BatchNorm statistics of N training batches (0: running)
        "log_every": 50,             # steps between checks of the loss (and progress updates)
    },
    "output": {
        "dir": "runs/{name}",        # run directory; {name} is the config's name
        "progress": "auto",          # a bar: auto (on a TTY, rank 0) | on | off; else a line every 30 s
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
        data = yaml_load(file.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ValueError(f"config {file} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise ValueError(f"config {file} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config {file} must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ValueError(f"config {file}: base must name one config file, got {base!r}")
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
    for (section, key), rule in _RULES.items():
        rule(f"{section}.{key}", full[section][key])
    model, data = full["model"], full["data"]
    for key in ("mean", "std"):
        values = data[key]
        if not isinstance(values, list) or len(values) not in (1, model["in_chans"]) \
                or not all(_is_number(v) for v in values):
            raise ValueError(f"data.{key} must be a list of model.in_chans = {model['in_chans']} numbers (or one for "
                             f"all channels), got {values!r}")
    if any(v <= 0 for v in data["std"]):
        raise ValueError(f"data.std must be positive, got {data['std']!r}")
    train = full["train"]
    if train["warmup_epochs"] != int(train["warmup_epochs"]) or train["warmup_epochs"] >= train["epochs"]:
        raise ValueError(f"train.warmup_epochs must be a whole number below train.epochs={train['epochs']}, got "
                         f"{train['warmup_epochs']}; e.g. --set train.warmup_epochs=0 for a short run")
    fields = set(re.findall(r"{([^{}]*)}", full["output"]["dir"]))
    if fields - {"name"}:
        raise ValueError(f"output.dir may hold the placeholder {{name}} only, got {full['output']['dir']!r}")
    return full


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(low: int, high: Optional[int] = None, optional: bool = False):
    def check(key: str, value: Any) -> None:
        if optional and value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
            raise ValueError(f"{key} must be an integer {bound}{' (or null)' if optional else ''}, got {value!r}")
    return check


def _number(low: float, high: Optional[float] = None, low_open: bool = False):
    def check(key: str, value: Any) -> None:
        if not _is_number(value) or value != value or (value <= low if low_open else value < low) \
                or (high is not None and value >= high):
            span = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high is not None else "")
            raise ValueError(f"{key} must be a number {span}, got {value!r}")
    return check


def _boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")


def _text(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string, got {value!r}")


def _optional_text(key: str, value: Any) -> None:
    if value is not None:
        _text(key, value)


def _envelope_size(key: str, value: Any) -> None:
    def odd(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % 2 == 1

    if value is not None and not odd(value) and not (isinstance(value, list) and 1 <= len(value) <= 3
                                                     and all(odd(v) for v in value)):
        raise ValueError(f"{key} must be an odd positive integer, a list of 1-3 of them (one per spatial axis) "
                         f"or null, got {value!r}")


def _pair_of_counts(key: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                and v >= 0 for v in value):
        raise ValueError(f"{key} must be a list of two non-negative integers [train, val], got {value!r}")


#: The type and range of every key that is not a choice (:data:`_CHOICES`) or a free mapping.
_RULES = {
    ("model", "name"): _text, ("model", "num_classes"): _integer(1), ("model", "in_chans"): _integer(1),
    ("model", "method"): _text, ("model", "where"): lambda k, v: None,  # checked by the converter
    ("model", "stem"): _text, ("model", "envelope_size"): _envelope_size, ("model", "shared_sigma"): _boolean,
    ("data", "train_subset"): _integer(1, optional=True), ("data", "val_subset"): _integer(1, optional=True),
    ("data", "image_size"): _integer(1, 4096), ("data", "crop_padding"): _integer(0, 1024),
    ("data", "object_scale"): _number(0, 64, low_open=True),
    ("data", "eval_resize"): _integer(1, 8192, optional=True), ("data", "workers"): _integer(0, 256),
    ("data", "synthetic_size"): _pair_of_counts, ("data", "root"): _optional_text, ("data", "train"): _optional_text,
    ("data", "val"): _optional_text, ("model", "order"): _optional_text,
    ("train", "epochs"): _integer(1), ("train", "batch_size"): _integer(1), ("train", "base_batch_size"): _integer(1),
    ("train", "lr"): _number(0), ("train", "momentum"): _number(0, 1), ("train", "nesterov"): _boolean,
    ("train", "weight_decay"): _number(0), ("train", "sigma_weight_decay"): _boolean,
    ("train", "sigma_lr_scale"): _number(0, low_open=True),
    ("train", "norm_weight_decay"): _boolean, ("train", "step_size"): _integer(1),
    ("train", "gamma"): _number(0, low_open=True), ("train", "warmup_epochs"): _number(0),
    ("train", "label_smoothing"): _number(0, 1), ("train", "seed"): _integer(0), ("train", "device"): _text,
    ("train", "channels_last"): _boolean, ("train", "schedule_per_step"): _boolean, ("train", "compile"): _boolean,
    ("train", "eval_every"): _integer(1), ("train", "recalibrate_bn"): _integer(0),
    ("train", "log_every"): _integer(1), ("output", "dir"): _text, ("output", "tensorboard"): _boolean,
}


def resolve_config(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Load ``path`` (a file or a bundled name), apply ``overrides`` and validate: the run's full config."""
    return validate_config(apply_overrides(load_config(path), overrides))


def dump_config(config: Dict[str, Any]) -> str:
    """The config as YAML text (sections in :data:`DEFAULTS` order)."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


def create_model_from_config(model_cfg: Dict[str, Any]) -> nn.Module:
    """Build the model a config's ``model`` section describes (see :data:`envconv.recipes.config.DEFAULTS`).

    With ``method: none`` the envelope keys (``envelope_size``, ``order``, ``shared_sigma``,
    ``options``) are ignored, so that a baseline is its envelope config with one key changed.
    """
    cfg = dict(model_cfg)
    options = dict(cfg.pop("options", None) or {})
    if cfg.get("method") == "none":
        options = {}
        cfg.update(envelope_size=None, order=None, shared_sigma=False)
    name = cfg.pop("name")
    clash = set(options) & set(cfg)
    if clash:
        raise ValueError(f"model.options repeats model keys {sorted(clash)}; set them in the model section")
    return create_model(name, **cfg, **options)
