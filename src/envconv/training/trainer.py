"""``envconv train``: a config in, a run directory out, on one CPU, one GPU or many (torchrun).

A run directory holds ``config.yaml`` (the resolved config), ``metrics.csv``, ``sigma.json``,
``last.pt`` (after every epoch), ``best.pt`` (at the best validation top-1 error),
``summary.json`` (at the end) and, when tensorboard is installed, ``tensorboard/``.
Checkpoints are written atomically by the main process only; they hold the unwrapped
model, optimizer, scheduler, scaler, epoch, RNG states and the resolved config.

Every epoch reseeds torch from (seed, epoch, rank) and the sampler from (seed, epoch), so
a run resumed after epoch k repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..checkpoint import atomic_save, atomic_write_bytes, load_checkpoint
from ..config import dump_config, resolve_config, validate_config
from ..data import build_datasets, build_loader, epoch_seed
from ..listing import envelopes
from ..methods.cbs import set_curriculum_epoch
from ..models.factory import create_model_from_config
from ..version import __version__
from . import distributed
from .engine import EpochStats, NonFiniteLossError, evaluate, train_one_epoch
from .optim import build_optimizer, build_scheduler
from .progress import METRICS_FILE, SIGMA_FILE, RunLog, progress_bar

try:
    import fcntl
except ImportError:  # Windows: no run-directory lock
    fcntl = None

__all__ = ["train", "run_dir_of", "RunInUseError", "try_lock", "add_arguments", "config_from_args", "main",
           "AMP_DTYPES", "LAST", "BEST"]

LAST, BEST, CONFIG_FILE, SUMMARY_FILE, LOCK_FILE = "last.pt", "best.pt", "config.yaml", "summary.json", ".lock"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class RunInUseError(FileExistsError):
    """Another process holds the run directory's lock (it is training that run now)."""


def run_dir_of(config: Dict[str, Any]) -> Path:
    """The run directory a config names (``output.dir`` with ``{name}`` filled in)."""
    return Path(str(config["output"]["dir"]).format(name=config["name"]))


def _rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


#: Keys a resumed run may change; anything else would silently differ from the checkpoint's state.
RESUMABLE_CHANGES = {("train", "epochs"), ("train", "eval_every"), ("train", "log_every"), ("train", "device"),
                     ("train", "compile"), ("data", "workers"), ("data", "root"), ("data", "train"), ("data", "val"),
                     ("output", "dir"), ("output", "progress"), ("output", "tensorboard")}


def _check_resume_changes(saved: Dict[str, Any], config: Dict[str, Any]) -> None:
    changed = [f"{section}.{key}" for section, values in config.items() if isinstance(values, dict)
               for key, value in values.items()
               if (section, key) not in RESUMABLE_CHANGES and saved.get(section, {}).get(key) != value]
    if changed:
        raise ValueError(f"a resumed run cannot change {', '.join(changed)} (the checkpoint's optimizer, schedule "
                         f"and model were built without it); start a new run instead")
    if config["train"]["epochs"] != saved["train"]["epochs"] and config["train"]["schedule"] == "cosine":
        raise ValueError("a resumed run with a cosine schedule cannot change train.epochs (the schedule's length)")


def _seed_epoch(seed: int, epoch: int, rank: int, loader) -> None:
    s = epoch_seed(seed, epoch, rank)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2 ** 32)
    loader.generator.manual_seed(s)  # worker seeds derive from it
    loader.sampler.set_epoch(epoch)


#: Files that record finished epochs: a fresh run never starts in a directory holding one.
RECORD_FILES = (LAST, BEST, SUMMARY_FILE, METRICS_FILE, SIGMA_FILE)


def _prepare_run_dir(run_dir: Path, resume: bool, ctx: distributed.DistributedContext) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"output.dir {run_dir} is a file, not a directory")
    held = [name for name in RECORD_FILES if (run_dir / name).exists()] if not resume else []
    if held:
        hint = (f"resume it with --resume {run_dir}" if LAST in held
                else "delete them to start afresh (no checkpoint to resume from)")
        raise FileExistsError(f"{run_dir} already holds a run ({', '.join(held)}); {hint}, "
                              f"or choose another directory with --set output.dir=...")
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path``; yields False (holding nothing) when another process has it.

    Without ``fcntl`` (Windows) there is no lock and it always yields True.
    """
    if fcntl is None:
        yield True
        return
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)  # while still held: no one else can be using it
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path, ctx: distributed.DistributedContext):
    """Hold an exclusive lock on ``run_dir`` (main process): two trainers never write one run directory."""
    if not ctx.is_main:
        yield
        return
    try:
        with try_lock(run_dir / LOCK_FILE) as locked:
            if not locked:
                raise RunInUseError(f"{run_dir} is in use: another envconv train holds {run_dir / LOCK_FILE}")
            yield
    finally:
        if run_dir.is_dir() and not any(run_dir.iterdir()):  # a run that failed before writing anything
            run_dir.rmdir()


def _log(ctx, quiet: bool, message: str) -> None:
    if ctx.is_main and not quiet:
        print(message, flush=True)


def _fmt_stats(prefix: str, s: Optional[EpochStats]) -> str:
    if s is None:
        return ""
    return f"  {prefix} loss {s.loss:.4f} top-1 err {s.top1_err:.2f}% top-5 {s.top5_err:.2f}%"


def train(config: Dict[str, Any], *, resume: bool = False, quiet: bool = False) -> Dict[str, Any]:
    """Train the model ``config`` describes; returns the run summary (also written to ``summary.json``).

    Args:
        config: a full config (:func:`envconv.config.validate_config` is applied).
        resume: continue the run in ``output.dir`` from its ``last.pt``.
        quiet: print nothing (files are written all the same).

    Raises:
        FileExistsError: the run directory holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without a ``last.pt``, or a missing dataset.
        NonFiniteLossError: the loss became NaN / infinite (the last checkpoint stays intact).

    Example:
        >>> import tempfile
        >>> from envconv.config import resolve_config
        >>> out = tempfile.mkdtemp()
        >>> config = resolve_config("fashion_mnist_resnet20", [
        ...     "data.dataset=synthetic", "data.synthetic_size=[64, 32]", "data.workers=0", "train.epochs=1",
        ...     "train.warmup_epochs=0", "train.batch_size=32", f"output.dir={out}", "output.tensorboard=false"])
        >>> summary = train(config, quiet=True)
        >>> summary["epochs"], sorted(p.name for p in Path(out).glob("*.pt"))
        (1, ['best.pt', 'last.pt'])
    """
    config = validate_config(config)
    train_cfg, out_cfg = config["train"], config["output"]
    ctx = distributed.setup(train_cfg["device"])
    try:
        summary = _train(config, train_cfg, out_cfg, ctx, resume, quiet)
        # every process reaches the teardown together: a gloo peer that leaves early can make the
        # other abort in destroy_process_group ("terminate called without an active exception")
        distributed.barrier()
        return summary
    finally:
        distributed.cleanup()


def _train(config, train_cfg, out_cfg, ctx, resume, quiet) -> Dict[str, Any]:
    run_dir = run_dir_of(config)
    _prepare_run_dir(run_dir, resume, ctx)
    with _run_dir_lock(run_dir, ctx):
        return _train_locked(config, train_cfg, out_cfg, ctx, resume, quiet, run_dir)


def _train_locked(config, train_cfg, out_cfg, ctx, resume, quiet, run_dir: Path) -> Dict[str, Any]:
    checkpoint = load_checkpoint(run_dir / LAST) if resume else None
    if checkpoint is not None:
        _check_resume_changes(checkpoint["config"], config)
        if train_cfg["epochs"] < checkpoint["epoch"]:
            raise ValueError(f"{run_dir} has trained {checkpoint['epoch']} epochs; train.epochs={train_cfg['epochs']} "
                             f"would train none and rewrite its record. Ask for more epochs, or start a new run")
    amp_dtype = AMP_DTYPES[train_cfg["amp"]]
    dtype = DTYPES[train_cfg["dtype"]]
    if amp_dtype is not None and dtype != torch.float32:
        raise ValueError(f"train.amp={train_cfg['amp']} needs train.dtype=float32, got {train_cfg['dtype']}")
    if train_cfg["amp"] == "fp16" and ctx.device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on the CPU")
    if train_cfg["batch_size"] % ctx.world:
        raise ValueError(f"train.batch_size={train_cfg['batch_size']} (the global batch) must be divisible by the "
                         f"{ctx.world} processes")

    torch.manual_seed(train_cfg["seed"])
    model = create_model_from_config(config["model"]).to(ctx.device, dtype)
    if train_cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train_cfg)
    train_loader, val_loader = _loaders(config, ctx)
    per_step = train_cfg["schedule_per_step"]
    scheduler = build_scheduler(optimizer, train_cfg, len(train_loader))
    scaler = _grad_scaler(ctx.device, enabled=train_cfg["amp"] == "fp16")
    start_epoch, best_err = 1, float("inf")
    log = RunLog(run_dir, ctx.is_main, out_cfg["tensorboard"])
    if checkpoint is not None:
        _restore(checkpoint, model, optimizer, scheduler, scaler)
        start_epoch, best_err = checkpoint["epoch"] + 1, checkpoint["best_val_top1_err"]
        log.truncate(checkpoint["epoch"])
    for split, loader in (("training", train_loader), ("validation", val_loader)):
        if len(loader.dataset) == 0:
            raise ValueError(f"the {split} data set is empty (data: {config['data']['dataset']}); nothing to train on")
    if ctx.is_main:  # after the data is found: a run that cannot start leaves nothing behind
        atomic_write_bytes(dump_config(config).encode(), run_dir / CONFIG_FILE)
    net = _wrap(model, ctx, train_cfg["compile"])

    n_params = sum(p.numel() for p in model.parameters())
    _log(ctx, quiet, f"run {run_dir}: {config['model']['name']} ({config['model']['method']}, {n_params:,} parameters, "
                     f"{len(envelopes(model))} envelopes) on {ctx.device} x {ctx.world}; "
                     f"{len(train_loader.dataset):,} training / {len(val_loader.dataset):,} validation images; "
                     f"epochs {start_epoch}..{train_cfg['epochs']}")
    progress_on = out_cfg["progress"] == "on" or (out_cfg["progress"] == "auto" and _stderr_is_tty())
    run_start, epoch = time.perf_counter(), start_epoch - 1
    val: Optional[EpochStats] = None
    try:
        for epoch in range(start_epoch, train_cfg["epochs"] + 1):
            set_curriculum_epoch(model, epoch - 1)
            _seed_epoch(train_cfg["seed"], epoch, ctx.rank, train_loader)
            lr = optimizer.param_groups[0]["lr"]
            with progress_bar(len(train_loader), f"epoch {epoch}/{train_cfg['epochs']}",
                              progress_on and ctx.is_main) as bar:
                stats = train_one_epoch(net, train_loader, optimizer, device=ctx.device, scaler=scaler,
                                        amp_dtype=amp_dtype, channels_last=train_cfg["channels_last"], dtype=dtype,
                                        label_smoothing=train_cfg["label_smoothing"],
                                        log_every=train_cfg["log_every"], progress=bar, epoch=epoch,
                                        scheduler=scheduler if per_step else None)
            if not per_step:
                scheduler.step()
            val = None
            if epoch % train_cfg["eval_every"] == 0 or epoch == train_cfg["epochs"]:
                with progress_bar(len(val_loader), "  eval", progress_on and ctx.is_main) as bar:
                    val = evaluate(net, val_loader, device=ctx.device, amp_dtype=amp_dtype,
                                   channels_last=train_cfg["channels_last"], dtype=dtype, progress=bar)
                _check_validation(val, epoch)
            log.log_epoch(_metrics_row(epoch, lr, stats, val), {e.name: list(e.sigmas) for e in envelopes(model)})
            is_best = val is not None and val.top1_err < best_err
            best_err = val.top1_err if is_best else best_err
            if ctx.is_main:
                _save(model, optimizer, scheduler, scaler, epoch, best_err, config, run_dir, is_best)
            _log(ctx, quiet, f"epoch {epoch}/{train_cfg['epochs']}  lr {lr:.4g}{_fmt_stats('train', stats)}"
                             f"{_fmt_stats('val', val)}  {stats.seconds:.0f} s, {stats.images_per_s:.0f} img/s"
                             f"{'  (best)' if is_best else ''}")
    except KeyboardInterrupt:
        if ctx.is_main:
            last = run_dir / LAST
            print(f"\ninterrupted in epoch {epoch}; " + (f"the last finished epoch is in {last}; continue with "
                  f"`envconv train --resume {run_dir}`" if last.exists() else "no epoch had finished"), flush=True)
        raise
    finally:
        log.close()
    summary = {"run_dir": str(run_dir), "name": config["name"], "model": config["model"]["name"],
               "method": config["model"]["method"], "epochs": train_cfg["epochs"], "parameters": n_params,
               "best_val_top1_err": best_err, "final_val": val.as_dict() if val else None,
               "seconds": time.perf_counter() - run_start, "world": ctx.world, "device": str(ctx.device),
               "envelopes": [row.as_dict() for row in envelopes(model)], "envconv_version": __version__}
    if ctx.is_main:
        atomic_write_bytes(json.dumps(summary, indent=1).encode(), run_dir / SUMMARY_FILE)
    return summary


def _check_validation(val: EpochStats, epoch: int) -> None:
    """A NaN/infinite validation loss ends the run before this epoch is recorded or saved."""
    if val.images == 0 or not all(math.isfinite(v) for v in (val.loss, val.top1_err)):
        raise NonFiniteLossError(
            f"the validation loss is not finite in epoch {epoch} ({val.loss}); stopping without writing this "
            f"epoch's checkpoint. Lower train.lr or add train.warmup_epochs; the last finished checkpoint is intact")


def _restore(checkpoint: Dict[str, Any], model, optimizer, scheduler, scaler) -> None:
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    _set_rng_state(checkpoint["rng"])


def _loaders(config: Dict[str, Any], ctx: distributed.DistributedContext):
    """This process's training loader (its share of the global batch) and validation loader."""
    train_set, val_set = build_datasets(config["data"], config["model"]["in_chans"], config["model"]["num_classes"])
    per_rank = config["train"]["batch_size"] // ctx.world
    common = dict(world=ctx.world, rank=ctx.rank, workers=config["data"]["workers"],
                  pin_memory=ctx.device.type == "cuda")
    return (build_loader(train_set, per_rank, train=True, seed=config["train"]["seed"], **common),
            build_loader(val_set, per_rank, train=False, **common))


def _wrap(model: nn.Module, ctx: distributed.DistributedContext, compile_model: bool) -> nn.Module:
    """What the loop calls: DDP around the model for several processes, then torch.compile if asked."""
    net = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    return torch.compile(net) if compile_model else net


def _metrics_row(epoch: int, lr: float, stats: EpochStats, val: Optional[EpochStats]) -> Dict[str, Any]:
    return {"epoch": epoch, "lr": lr, "train_loss": stats.loss, "train_top1_err": stats.top1_err,
            "train_top5_err": stats.top5_err, "val_loss": val.loss if val else None,
            "val_top1_err": val.top1_err if val else None, "val_top5_err": val.top5_err if val else None,
            "seconds": stats.seconds, "images_per_s": stats.images_per_s}


def _grad_scaler(device: torch.device, enabled: bool):
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled and device.type == "cuda")


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _save(model, optimizer, scheduler, scaler, epoch, best_err, config, run_dir: Path, is_best: bool) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "epoch": epoch, "best_val_top1_err": best_err, "rng": _rng_state(),
             "config": config, "envconv_version": __version__}
    atomic_save(state, run_dir / LAST)
    if is_best:
        atomic_save(state, run_dir / BEST)


# --- command line ------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv train``'s arguments to ``parser``."""
    parser.add_argument("--config", help="a YAML config file, or the name of a bundled one "
                        "(e.g. fashion_mnist_resnet20, imagenet_resnet50)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=10 --set model.method=none "
                        "(repeatable; values are read as YAML)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt "
                        "(with the run's own config; --set still applies, e.g. more epochs)")
    parser.add_argument("--quiet", action="store_true", help="print nothing; files are written as usual")
    return parser


def config_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The full config an ``envconv train`` command line describes."""
    if args.resume:
        if args.config:
            raise ValueError("--resume continues a run with its own config; change it with --set, not --config")
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
        if not (run_dir / LAST).is_file():
            raise FileNotFoundError(f"{run_dir} has no finished epoch to resume ({LAST} is missing); start it afresh "
                                    f"with: envconv train --config {run_dir / CONFIG_FILE} --set output.dir={run_dir}")
        config = resolve_config(run_dir / CONFIG_FILE, args.overrides)
        asked, own = Path(config["output"]["dir"]), Path(resolve_config(run_dir / CONFIG_FILE)["output"]["dir"])
        if asked != own and asked.resolve() != run_dir.resolve():
            fork_run(run_dir, asked)  # --set output.dir=OTHER: resume a copy, the original run stays as it is
        else:
            config["output"]["dir"] = str(run_dir)  # the run where it is now, even if it was moved
        return config
    if not args.config:
        raise ValueError("give --config CONFIG (a YAML file or a bundled config name) or --resume RUN_DIR")
    return resolve_config(args.config, args.overrides)


#: The files of a run directory that a fork copies (checkpoints and logs; not the lock or tensorboard).
FORK_FILES = (CONFIG_FILE, LAST, BEST, METRICS_FILE, SIGMA_FILE)


def fork_run(source: Path, target: Path) -> None:
    """Copy run ``source``'s checkpoints and logs into the new directory ``target``.

    This is ``--resume`` with another ``output.dir``: the resumed training writes there and
    ``source`` is left untouched.

    Raises:
        FileExistsError: ``target`` already holds a run.
    """
    if (target / LAST).exists() or (target / CONFIG_FILE).exists():
        raise FileExistsError(f"cannot fork {source} into {target}: it already holds a run")
    if not (source / LAST).is_file():
        raise FileNotFoundError(f"{source} has no {LAST} to resume from")
    target.mkdir(parents=True, exist_ok=True)
    for name in FORK_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def main(args: argparse.Namespace) -> int:
    """Run ``envconv train``: train (or resume) the run the arguments describe."""
    config = config_from_args(args)
    summary = train(config, resume=bool(args.resume), quiet=args.quiet)
    if not args.quiet and distributed_rank() == 0:
        print(f"best val top-1 error {summary['best_val_top1_err']:.2f}% ({summary['seconds']:.0f} s); "
              f"run directory {summary['run_dir']}")
    return 0


def distributed_rank() -> int:
    """This process's rank under torchrun (0 for a plain start)."""
    return int(os.environ.get("RANK", "0"))

