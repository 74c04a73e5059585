"""A tiny study: a base config on 256 synthetic images and a plan over it (seconds on 2 CPU cores)."""

import yaml

from envconv.recipes.config import dump_config
from run_helpers import tiny_config


def write_plan(tmp_path, *, seeds=(0, 1), entries=None, extra=None, epochs=1, probe=None):
    """Write ``base.yaml`` and ``plan.yaml`` into ``tmp_path``; returns the plan's path."""
    base = tiny_config(tmp_path / "unused", train={"epochs": epochs})
    (tmp_path / "base.yaml").write_text(dump_config(base))
    plan = {
        "name": "tiny",
        "base": "base.yaml",
        "seeds": list(seeds),
        "baseline": "none",
        "entries": entries or [
            {"name": "none", "label": "baseline", "tables": ["1a"], "paper": 23.81,
             "set": {"model.method": "none", "model.options": {}}},
            {"name": "gaussian", "label": "ours", "tables": ["1a", "1e"], "paper": 23.03,
             "set": {"model.method": "gaussian"}},
        ],
        "evaluations": [{"name": "gaussian-k3", "of": "gaussian", "envelope_size": 3, "tables": ["1e"]}],
        "claims": [{"table": "1a", "text": "envelopes help", "better": "gaussian", "than": "none"},
                   {"table": "1e", "text": "3 taps lose nothing", "same": "gaussian-k3", "as": "gaussian"}],
    }
    if probe:
        plan["probe"] = probe
    plan.update(extra or {})
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path
