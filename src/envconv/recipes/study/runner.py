"""Run a study plan: every run of the grid, one after another, resumable at any point.

For each run, in order: train (skipped when the run finished; resumed from ``last.pt``
through the trainer's exact resume when the run was stopped part-way), then the plan's
evaluations of ``last.pt`` with shrunk envelopes, then the transfer probe (the files of
:class:`~envconv.recipes.rundir.RunDir`). Every step is skipped when its file exists, so the
same command continues an interrupted study wherever it stopped. A run whose loss becomes
NaN/infinite is recorded as failed and skipped from then on (delete its ``failed.json`` to try
it again); the study goes on with the other runs.

Several ``envconv study`` processes may work on one plan side by side (e.g. one per core with
``OMP_NUM_THREADS=1``): each holds a lock on the run it works on (``.study.lock`` in its
directory) and skips the runs another process holds, so no run is trained twice. Start the
command again once they are done to pick up a run that was skipped while busy. (Windows has no
such lock: run one study process at a time there.)
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ...state_dict import atomic_write_bytes
from ...version import __version__
from ..config import create_model_from_config
from ..data import build_dataset
from ..machine import machine_info
from ..rundir import RunDir, RunInUseError
from ..training.engine import NonFiniteLossError
from ..training.evaluation import evaluate_checkpoint
from ..training.probe import linear_probe
from ..training.trainer import train
from .plan import Plan, Run

__all__ = ["run_study", "dry_run", "measure_epoch_seconds", "hardware"]

#: SGD steps timed (after 2 warm-up steps) to estimate an epoch of an entry without finished epochs.
TIMED_STEPS = 5


def hardware() -> Dict[str, Any]:
    """The machine a run trained on (recorded in each run directory for the report)."""
    info = machine_info()
    return {"cpu": info["cpu"], "cores": os.cpu_count(), "torch_threads": info["threads"], "gpu": info.get("gpu"),
            "torch": info["torch"], "python": info["python"], "envconv": __version__}


def _train_images(config: Dict[str, Any], cache: Dict[str, int]) -> int:
    key = json.dumps(config["data"], sort_keys=True)
    if key not in cache:
        cache[key] = len(build_dataset(config["data"], "train", config["model"]["in_chans"],
                                       config["model"]["num_classes"]))
    return cache[key]


def measure_epoch_seconds(config: Dict[str, Any], train_images: int, steps: int = TIMED_STEPS,
                          warmup: int = 2) -> float:
    """Seconds of one epoch (training plus its share of evaluation), from timed SGD steps on random images.

    The model of ``config`` runs ``warmup + steps`` steps of the configured batch; the mean
    step time is scaled to ``train_images``, and evaluations are counted at a third of a
    training step per batch (forward only).
    """
    torch.manual_seed(0)
    model = create_model_from_config(config["model"])
    batch, size = config["train"]["batch_size"], config["data"]["image_size"]
    images = torch.randn(batch, config["model"]["in_chans"], size, size)
    labels = torch.randint(0, config["model"]["num_classes"], (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step = (time.perf_counter() - start) / steps
    train_cfg = config["train"]
    evals_per_epoch = math.ceil(train_cfg["epochs"] / train_cfg["eval_every"]) / train_cfg["epochs"]
    val_images = config["data"]["val_subset"] or 10_000
    return step * math.ceil(train_images / batch) + evals_per_epoch * step / 3 * math.ceil(val_images / batch)


def _epochs_done(run: Run) -> int:
    return len(RunDir.of_config(run.config).epoch_seconds())


def _format_duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _epoch_estimates(plan: Plan, runs: List[Run], measure: bool) -> Dict[str, float]:
    """Seconds per epoch of the entries that have a measurement: their finished epochs, else (``measure``) timed steps.

    :func:`_with_median` gives the others the median.
    """
    estimates: Dict[str, float] = {}
    for entry in plan.entries:
        seconds = [s for run in runs if run.entry is entry for s in RunDir.of_config(run.config).epoch_seconds()]
        if seconds:
            estimates[entry.name] = statistics.median(seconds)
    cache: Dict[str, int] = {}
    for entry in plan.entries:
        if entry.name not in estimates and measure:
            config = next(run.config for run in runs if run.entry is entry)
            estimates[entry.name] = measure_epoch_seconds(config, _train_images(config, cache))
    return estimates


def _with_median(plan: Plan, measured: Dict[str, float]) -> Dict[str, float]:
    """Seconds per epoch for every entry: its measurement, else the median of the others' (0 without any)."""
    median = statistics.median(measured.values()) if measured else 0.0
    return {e.name: measured.get(e.name, median) for e in plan.entries}


def _seconds_left(runs: List[Run], estimates: Dict[str, float]) -> float:
    return sum(max(run.config["train"]["epochs"] - _epochs_done(run), 0) * estimates[run.entry.name] for run in runs)


def dry_run(plan: Plan, out_dir: Path, log: Callable[[str], None] = print, estimate: bool = False) -> Dict[str, Any]:
    """List the grid with each run's state and the training time left; trains nothing, returns in seconds.

    Epoch times come from the finished epochs in ``out_dir``; an entry without any gets the
    median of the others, or, with ``estimate``, a timing of a few training steps of its model
    (minutes for a whole plan).

    Example:
        >>> dry_run(load_plan("studies/fashion_mnist.yaml"), Path("results/study-fashion_mnist"))  # doctest: +SKIP
    """
    runs = plan.runs(out_dir)
    measured = _epoch_estimates(plan, runs, measure=estimate)
    estimates = _with_median(plan, measured)
    log(f"study {plan.name}: {len(plan.entries)} entries, {len(runs)} runs (seeds {plan.seeds}; "
        f"{sum(e.seeds is not None for e in plan.entries)} entries have their own) in {out_dir}")
    log(f"{'run':32s} {'epochs':>7s} {'s/epoch':>8s}  state")
    for run in runs:
        done, epochs = _epochs_done(run), run.config["train"]["epochs"]
        state = ("finished" if RunDir.of_config(run.config).finished
                 else f"resumes after epoch {done}" if done else "to train")
        seconds = f"{estimates[run.entry.name]:8.0f}" if estimates[run.entry.name] else f"{'?':>8s}"
        log(f"{run.name:32s} {epochs:7d} {seconds}  {state}")
    left = _seconds_left(runs, estimates)
    if not any(estimates.values()):
        log("training time left: unknown (no finished epochs here; --estimate times a few steps of each entry)")
    else:
        how = (f"else by timing {TIMED_STEPS} training steps of each entry's model" if estimate
               else "else the median of the other entries; --estimate times them" if len(measured) < len(estimates)
               else "")
        log(f"estimated training time left: {_format_duration(left)} (epoch times measured in finished epochs"
            f"{', ' + how if how else ''})")
    return {"runs": [r.name for r in runs], "seconds_left": left, "epoch_seconds": estimates}


def _write_run_info(run: Run) -> None:
    path = RunDir.of_config(run.config).run_info_file
    if path.exists():
        return
    info = {"entry": run.entry.name, "label": run.entry.label, "tables": run.entry.tables, "seed": run.seed,
            "hardware": hardware()}
    atomic_write_bytes(json.dumps(info, indent=1).encode(), path)


def _train(run: Run, quiet: bool, log) -> bool:
    """Train (or resume, or skip) one run; False when it failed, now or in an earlier invocation."""
    run_dir = RunDir.of_config(run.config)
    if run_dir.finished:
        return True
    if run_dir.failed_file.exists():
        log(f"  skipped: it failed before ({run_dir.failed_file}; delete the file to try again)")
        return False
    run_dir.path.mkdir(parents=True, exist_ok=True)
    stale = run_dir.clear_stale_records()  # records of an unfinished run whose checkpoint is gone (another machine)
    if stale:
        log(f"  no checkpoint to resume from: restarting the run (removed its stale {', '.join(stale)})")
    _write_run_info(run)
    try:
        train(run.config, resume=run_dir.last.exists(), quiet=quiet)
    except NonFiniteLossError as err:
        atomic_write_bytes(json.dumps({"run": run.name, "error": str(err)}, indent=1).encode(), run_dir.failed_file)
        log(f"  failed: {err}; the study goes on without it")
        return False
    return True


def _evaluate(run: Run, plan: Plan, log) -> None:
    checkpoint = RunDir.of_config(run.config).last
    for ev in plan.evaluations:
        output = RunDir.eval_file(checkpoint, ev.envelope_size, ev.object_scale, ev.recalibrate_bn)
        if ev.of != run.entry.name or output.exists():
            continue
        result = evaluate_checkpoint(checkpoint, envelope_size=ev.envelope_size, object_scale=ev.object_scale,
                                     recalibrate_bn=ev.recalibrate_bn)
        atomic_write_bytes(json.dumps(result, indent=1).encode(), output)
        how = [f"envelopes of size {ev.envelope_size}"] if ev.envelope_size is not None else []
        how += [f"objects at scale {ev.object_scale:g}"] if ev.object_scale is not None else []
        how += [f"BatchNorm statistics of {ev.recalibrate_bn} batches"] if ev.recalibrate_bn else []
        log(f"  {ev.name}: top-1 error {result['top1_err']:.2f}% with {' and '.join(how)}")


def _probe(run: Run, plan: Plan, log) -> None:
    if not plan.probe:
        return
    checkpoint = RunDir.of_config(run.config).last
    options = dict(plan.probe)
    dataset = options.pop("dataset")
    output = RunDir.probe_file(checkpoint, dataset)
    if output.exists():
        return
    result = linear_probe(checkpoint, dataset=dataset, seed=run.seed, **options)
    atomic_write_bytes(json.dumps(result, indent=1).encode(), output)
    log(f"  probe ({dataset}): top-1 error {result['val']['top1_err']:.2f}%")


def run_study(plan: Plan, out_dir: Path, *, quiet: bool = False, only: Optional[Sequence[str]] = None,
              log: Optional[Callable[[str], None]] = None) -> List[Run]:
    """Train, evaluate and probe every run of ``plan`` under ``out_dir`` that is not finished yet.

    ``only``: train just these entries (e.g. the ones a claim needs first); the others wait.

    Example:
        >>> plan = load_plan("studies/fashion_mnist.yaml")  # doctest: +SKIP
        >>> run_study(plan, Path("results/study-fashion_mnist"), only=["none", "gaussian"])  # doctest: +SKIP
    """
    log = log or (lambda message: print(message, flush=True))
    runs = plan.runs(out_dir, only)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    failed: List[str] = []
    busy: List[str] = []
    for i, run in enumerate(runs, 1):
        estimates = _with_median(plan, _epoch_estimates(plan, runs, measure=False))
        left = _seconds_left(runs[i - 1:], estimates)
        eta = f", about {_format_duration(left)} of training left" if left else ""
        done = _epochs_done(run)
        run_dir = RunDir.of_config(run.config)
        state = ("finished: evaluations only" if run_dir.finished
                 else f"resuming after epoch {done}" if done else "training")
        with run_dir.claim() as claimed:
            if not claimed:
                log(f"[study {plan.name}] run {i}/{len(runs)} {run.name}: skipped, another envconv study "
                    f"process is working on it")
                busy.append(run.name)
                continue
            log(f"[study {plan.name}] run {i}/{len(runs)} {run.name}: {state}{eta}")
            try:
                trained = _train(run, quiet, log)
            except RunInUseError:  # an `envconv train` (or an older study process) is training it
                log(f"  skipped: {run_dir} is being trained by another process")
                busy.append(run.name)
                continue
            if trained:
                _evaluate(run, plan, log)
                _probe(run, plan, log)
            else:
                failed.append(run.name)
    finished = len(runs) - len(failed) - len(busy)
    log(f"[study {plan.name}] {finished} of {len(runs)} runs finished in {out_dir}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + (f"; skipped while another process had them (run the command again when it is done): "
           f"{', '.join(busy)}" if busy else ""))
    return runs
