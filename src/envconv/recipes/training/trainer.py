"""``envconv train``: a config in, a run directory out, on one CPU, one GPU or many (torchrun).

The run directory's files are those of :class:`~envconv.recipes.rundir.RunDir`: the resolved
config, per-epoch metrics and sigmas, ``last.pt`` after every epoch, ``best.pt`` at the best
validation top-1 error and a summary at the end. Checkpoints are written atomically by the main
process only; they hold the unwrapped model, optimizer, scheduler, scaler, epoch, RNG states and
the resolved config.

Every epoch reseeds torch from (seed, epoch, rank) and the sampler from (seed, epoch), so
a run resumed after epoch k repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from ...listing import envelopes
from ...methods.cbs import set_curriculum_epoch
from ...state_dict import atomic_save, atomic_write_bytes
from ...version import __version__
from ..config import create_model_from_config, dump_config, resolve_config, validate_config
from ..data import build_datasets, build_loader, build_recalibration_loader, epoch_seed
from ..rundir import RunDir, load_checkpoint
from ..signals import Terminated, stop_on_signals
from . import distributed
from .engine import EpochStats, NonFiniteLossError, evaluate, recalibrate_batchnorm, train_one_epoch
from .optim import build_optimizer, build_scheduler
from .progress import RunLog, progress_bar

__all__ = ["train", "add_arguments", "config_from_args", "main", "AMP_DTYPES"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
RESUMABLE_CHANGES = {("train", "epochs"), ("train", "eval_every"), ("train", "recalibrate_bn"), ("train", "log_every"),
                     ("train", "device"), ("train", "compile"), ("data", "workers"), ("data", "root"),
                     ("data", "train"), ("data", "val"), ("output", "dir"), ("output", "progress"),
                     ("output", "tensorboard")}


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
        config: a full config (:func:`envconv.recipes.config.validate_config` is applied).
        resume: continue the run in ``output.dir`` from its ``last.pt``.
        quiet: print nothing (files are written all the same).

    Raises:
        FileExistsError: the run directory holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without a ``last.pt``, or a missing dataset.
        NonFiniteLossError: the loss became NaN / infinite (the last checkpoint stays intact).

    Example:
        >>> import tempfile
        >>> from envconv.recipes.config import resolve_config
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
        with stop_on_signals():  # SIGTERM / SIGHUP end the run as Ctrl-C does
            summary = _train(config, train_cfg, out_cfg, ctx, resume, quiet)
        # every process reaches the teardown together: a gloo peer that leaves early can make the
        # other abort in destroy_process_group ("terminate called without an active exception")
        distributed.barrier()
        return summary
    finally:
        distributed.cleanup()


def _train(config, train_cfg, out_cfg, ctx, resume, quiet) -> Dict[str, Any]:
    run = RunDir.of_config(config)
    run.prepare(resume, ctx.is_main)
    with run.lock(ctx.is_main):
        if ctx.is_main:
            run.check_writable()
            run.remove_stale_temporaries()  # left by a write that a kill -9 or a power cut interrupted
        checkpoint = _check_start(config, run, ctx, resume)
        state = _build(config, run, ctx, checkpoint)
        _log(ctx, quiet, f"run {run}: {config['model']['name']} ({config['model']['method']}, "
                         f"{state.parameters:,} parameters, {len(envelopes(state.model))} envelopes) on {ctx.device} "
                         f"x {ctx.world}; {len(state.train_loader.dataset):,} training / "
                         f"{len(state.val_loader.dataset):,} validation images; "
                         f"epochs {state.start_epoch}..{train_cfg['epochs']}")
        if train_cfg["compile"]:
            _log(ctx, quiet, "train.compile: torch.compile builds the model's kernels during the first steps; they "
                             "may take minutes (more on a CPU), the steps after them are fast")
        run_start = time.perf_counter()
        val = _run_epochs(config, run, ctx, state, quiet)
        return _write_summary(config, run, ctx, state, val, time.perf_counter() - run_start)


def _check_start(config, run: RunDir, ctx, resume: bool) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume from (``None`` for a fresh run), after every check that needs no data."""
    train_cfg = config["train"]
    checkpoint = load_checkpoint(run.last) if resume else None
    if checkpoint is not None:
        _check_resume_changes(checkpoint["config"], config)
        if train_cfg["epochs"] < checkpoint["epoch"]:
            raise ValueError(f"{run} has trained {checkpoint['epoch']} epochs; train.epochs={train_cfg['epochs']} "
                             f"would train none and rewrite its record. Ask for more epochs, or start a new run")
    if AMP_DTYPES[train_cfg["amp"]] is not None and DTYPES[train_cfg["dtype"]] != torch.float32:
        raise ValueError(f"train.amp={train_cfg['amp']} needs train.dtype=float32, got {train_cfg['dtype']}")
    if train_cfg["amp"] == "fp16" and ctx.device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on the CPU")
    if train_cfg["batch_size"] % ctx.world:
        raise ValueError(f"train.batch_size={train_cfg['batch_size']} (the global batch) must be divisible by the "
                         f"{ctx.world} processes")
    return checkpoint


@dataclass
class _State:
    """What the epochs work on: the model (unwrapped and as called), its optimizer, schedule and data."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    train_loader: Any
    val_loader: Any
    log: RunLog
    bn_loader: Any = None  # training images without augmentation, for train.recalibrate_bn
    start_epoch: int = 1
    best_err: float = float("inf")

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _build(config, run: RunDir, ctx, checkpoint: Optional[Dict[str, Any]]) -> _State:
    """Model, optimizer, schedule, scaler and loaders, restored from ``checkpoint`` when resuming."""
    train_cfg = config["train"]
    torch.manual_seed(train_cfg["seed"])
    model = create_model_from_config(config["model"]).to(ctx.device, DTYPES[train_cfg["dtype"]])
    if train_cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, train_cfg)
    train_loader, val_loader = _loaders(config, ctx)
    state = _State(model, model, optimizer, build_scheduler(optimizer, train_cfg, len(train_loader)),
                   _grad_scaler(ctx.device, enabled=train_cfg["amp"] == "fp16"), train_loader, val_loader,
                   RunLog(run, ctx.is_main, config["output"]["tensorboard"]))
    if checkpoint is not None:
        _restore(checkpoint, model, optimizer, state.scheduler, state.scaler)
        state.start_epoch, state.best_err = checkpoint["epoch"] + 1, checkpoint["best_val_top1_err"]
        state.log.truncate(checkpoint["epoch"])
    for split, loader in (("training", train_loader), ("validation", val_loader)):
        if len(loader.dataset) == 0:
            raise ValueError(f"the {split} data set is empty (data: {config['data']['dataset']}); nothing to train on")
    if train_cfg["recalibrate_bn"]:
        state.bn_loader = build_recalibration_loader(
            config["data"], config["model"]["in_chans"], config["model"]["num_classes"],
            train_cfg["batch_size"] // ctx.world, world=ctx.world, rank=ctx.rank, pin_memory=ctx.device.type == "cuda")
    if ctx.is_main:  # after the data is found: a run that cannot start leaves nothing behind
        atomic_write_bytes(dump_config(config).encode(), run.config_file)
    state.net = _wrap(model, ctx, train_cfg["compile"])
    return state


def _run_epochs(config, run: RunDir, ctx, state: _State, quiet: bool) -> Optional[EpochStats]:
    """Train the remaining epochs, saving after each; the last epoch's validation stats."""
    train_cfg, out_cfg = config["train"], config["output"]
    progress_on = ctx.is_main and (out_cfg["progress"] == "on" or (out_cfg["progress"] == "auto" and _stderr_is_tty()))
    amp_dtype, dtype = AMP_DTYPES[train_cfg["amp"]], DTYPES[train_cfg["dtype"]]
    per_step = train_cfg["schedule_per_step"]
    epoch, val, started = state.start_epoch - 1, None, time.monotonic()
    try:
        for epoch in range(state.start_epoch, train_cfg["epochs"] + 1):
            set_curriculum_epoch(state.model, epoch - 1)
            _seed_epoch(train_cfg["seed"], epoch, ctx.rank, state.train_loader)
            lr = state.optimizer.param_groups[0]["lr"]
            with progress_bar(len(state.train_loader), f"epoch {epoch}/{train_cfg['epochs']}", progress_on,
                              heartbeat=ctx.is_main and not quiet,
                              later_steps=len(state.train_loader) * (train_cfg["epochs"] - epoch)) as bar:
                stats = train_one_epoch(state.net, state.train_loader, state.optimizer, device=ctx.device,
                                        scaler=state.scaler, amp_dtype=amp_dtype,
                                        channels_last=train_cfg["channels_last"], dtype=dtype,
                                        label_smoothing=train_cfg["label_smoothing"],
                                        log_every=train_cfg["log_every"], progress=bar, epoch=epoch,
                                        scheduler=state.scheduler if per_step else None)
            if not per_step:
                state.scheduler.step()
            val = None
            if epoch % train_cfg["eval_every"] == 0 or epoch == train_cfg["epochs"]:
                if state.bn_loader is not None:  # the statistics of the current weights, kept in the checkpoint
                    recalibrate_batchnorm(state.model, state.bn_loader, train_cfg["recalibrate_bn"], device=ctx.device,
                                          channels_last=train_cfg["channels_last"], dtype=dtype)
                with progress_bar(len(state.val_loader), "  eval", progress_on, heartbeat=ctx.is_main and not quiet) \
                        as bar:
                    val = evaluate(state.net, state.val_loader, device=ctx.device, amp_dtype=amp_dtype,
                                   channels_last=train_cfg["channels_last"], dtype=dtype, progress=bar)
                _check_validation(val, epoch)
            state.log.log_epoch(_metrics_row(epoch, lr, stats, val),
                                {e.name: list(e.sigmas) for e in envelopes(state.model)})
            is_best = val is not None and val.top1_err < state.best_err
            state.best_err = val.top1_err if is_best else state.best_err
            if ctx.is_main:
                _save(state, epoch, config, run, is_best)
            _log(ctx, quiet, f"epoch {epoch}/{train_cfg['epochs']}  lr {lr:.4g}{_fmt_stats('train', stats)}"
                             f"{_fmt_stats('val', val)}  {stats.seconds:.0f} s, {stats.images_per_s:.0f} img/s"
                             f"{'  (best)' if is_best else ''}"
                             f"{_time_left(started, epoch, state.start_epoch, train_cfg)}")
    except KeyboardInterrupt as stop:
        if ctx.is_main:
            how = f"stopped by {stop}" if isinstance(stop, Terminated) else "interrupted"
            print(f"\n{how} in epoch {epoch}; " + (f"the last finished epoch is in {run.last}; continue with "
                  f"`envconv train --resume {run}`" if run.last.exists() else "no epoch had finished"), flush=True)
        raise
    finally:
        state.log.close()
    return val


def _time_left(started: float, epoch: int, first: int, train_cfg) -> str:
    """``, about N min left`` (or ``N s``) at the run's mean wall time per epoch so far; empty at the end."""
    left = train_cfg["epochs"] - epoch
    if left <= 0:
        return ""
    seconds = (time.monotonic() - started) / (epoch - first + 1) * left
    return f", about {seconds / 60:.0f} min left" if seconds >= 90 else f", about {seconds:.0f} s left"


def _write_summary(config, run: RunDir, ctx, state: _State, val: Optional[EpochStats],
                   seconds: float) -> Dict[str, Any]:
    summary = {"run_dir": str(run), "name": config["name"], "model": config["model"]["name"],
               "method": config["model"]["method"], "epochs": config["train"]["epochs"],
               "parameters": state.parameters, "best_val_top1_err": state.best_err,
               "final_val": val.as_dict() if val else None, "seconds": seconds, "world": ctx.world,
               "device": str(ctx.device), "envelopes": [row.as_dict() for row in envelopes(state.model)],
               "envconv_version": __version__}
    if ctx.is_main:
        atomic_write_bytes(json.dumps(summary, indent=1).encode(), run.summary_file)
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


def _save(state: _State, epoch: int, config, run: RunDir, is_best: bool) -> None:
    checkpoint = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                  "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(), "epoch": epoch,
                  "best_val_top1_err": state.best_err, "rng": _rng_state(), "config": config,
                  "envconv_version": __version__}
    atomic_save(checkpoint, run.last)
    if is_best:
        atomic_save(checkpoint, run.best)


# --- command line ------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv train``'s arguments to ``parser``."""
    parser.add_argument("--config", help="a YAML config file, or the name of a bundled one "
                        "(e.g. fashion_mnist_resnet20, imagenet_resnet50)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=10 --set model.method=none "
                        "(repeatable; values are read as YAML)")
    parser.add_argument("--resume", metavar="RUN_DIR", help=f"continue the run in RUN_DIR from its {RunDir.LAST} "
                        "(with the run's own config; --set still applies, e.g. more epochs)")
    parser.add_argument("--quiet", action="store_true", help="print nothing; files are written as usual")
    return parser


def config_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The full config an ``envconv train`` command line describes."""
    if args.resume:
        if args.config:
            raise ValueError("--resume continues a run with its own config; change it with --set, not --config")
        run = RunDir(args.resume)
        run.check_resumable()
        config = resolve_config(run.config_file, args.overrides)
        asked, own = Path(config["output"]["dir"]), Path(resolve_config(run.config_file)["output"]["dir"])
        if asked != own and asked.resolve() != run.path.resolve():
            run.fork(RunDir(asked))  # --set output.dir=OTHER: resume a copy, the original run stays as it is
        else:
            config["output"]["dir"] = str(run)  # the run where it is now, even if it was moved
        return config
    if not args.config:
        raise ValueError("give --config CONFIG (a YAML file or a bundled config name) or --resume RUN_DIR")
    return resolve_config(args.config, args.overrides)


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

