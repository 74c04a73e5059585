"""The run directory: the one module that knows its files, its locks and its checkpoints.

A run directory (``output.dir`` of a config) holds:

==========================  ==================================================================
``config.yaml``             the resolved config (written once the data is found)
``metrics.csv``             one row per finished epoch
``sigma.json``              every envelope's sigmas after each epoch
``last.pt``, ``best.pt``    checkpoints after every epoch / at the best validation error
``summary.json``            the run's summary, at the end
``tensorboard/``            scalars, when tensorboard is installed
``eval-*.json``             ``envconv eval`` results, ``probe-*.json`` ``envconv probe`` results
``study-run.json``          a study run's entry, seed and hardware; ``failed.json`` if it failed
``.lock``, ``.study.lock``  held by the trainer / a study process while they work on it
==========================  ==================================================================

Trainer, evaluation, probe, analysis and study all go through :class:`RunDir`; no other
module spells a run file's name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..listing import EnvelopeInfo, envelopes
from ..state_dict import load_torch_file
from .config import create_model_from_config, resolve_config, validate_config

try:
    import fcntl
except ImportError:  # Windows: no run-directory lock
    fcntl = None

__all__ = ["RunDir", "RunInUseError", "try_lock", "hold_lock", "load_checkpoint", "model_from_checkpoint",
           "CHECKPOINT_KEYS", "checkpoint_of", "check_writable"]

#: Entries every training checkpoint holds.
CHECKPOINT_KEYS = ("model", "config", "epoch")


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Wait for and hold an exclusive lock on the file ``path``, kept in place (processes take turns).

    Unlike :func:`try_lock`, the file is never removed: a waiter must lock the same file as the
    holder. Without ``fcntl`` (Windows) there is no lock.
    """
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


class RunInUseError(FileExistsError):
    """Another process holds the run directory's lock (it is training that run now)."""


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


class RunDir:
    """One run directory and its files.

    Example:
        >>> run = RunDir("runs/demo/gaussian")
        >>> run.last.name, run.eval_file(run.last, 3).name, run.probe_file(run.best, "digits").name
        ('last.pt', 'eval-last-k3.json', 'probe-best-digits.json')
    """

    CONFIG, METRICS, SIGMA, SUMMARY = "config.yaml", "metrics.csv", "sigma.json", "summary.json"
    LAST, BEST = "last.pt", "best.pt"
    LOCK, STUDY_LOCK, RUN_INFO, FAILED = ".lock", ".study.lock", "study-run.json", "failed.json"
    TENSORBOARD = "tensorboard"
    #: The files that record finished epochs; a fresh run never starts in a directory holding one.
    RECORDS = (LAST, BEST, SUMMARY, METRICS, SIGMA)
    #: The files a fork (``--resume`` into another ``output.dir``) copies, checkpoints and logs.
    FORKED = (CONFIG, LAST, BEST, METRICS, SIGMA)

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = Path(path)

    @classmethod
    def of_config(cls, config: Mapping[str, Any]) -> "RunDir":
        """The run directory a config names (``output.dir`` with ``{name}`` filled in)."""
        return cls(str(config["output"]["dir"]).format(name=config["name"]))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # --- its files --------------------------------------------------------------------------------------

    config_file = property(lambda self: self.path / self.CONFIG)
    metrics_file = property(lambda self: self.path / self.METRICS)
    sigma_file = property(lambda self: self.path / self.SIGMA)
    summary_file = property(lambda self: self.path / self.SUMMARY)
    last = property(lambda self: self.path / self.LAST)
    best = property(lambda self: self.path / self.BEST)
    lock_file = property(lambda self: self.path / self.LOCK)
    run_info_file = property(lambda self: self.path / self.RUN_INFO)
    failed_file = property(lambda self: self.path / self.FAILED)
    tensorboard_dir = property(lambda self: self.path / self.TENSORBOARD)

    @staticmethod
    def eval_file(checkpoint: Path, envelope_size: Union[int, str, Sequence[int], None] = None,
                  object_scale: Optional[float] = None, recalibrate_bn: int = 0) -> Path:
        """Where ``envconv eval`` of ``checkpoint`` writes: ``eval-<checkpoint>[-k<size>][-s<scale>][-bn<N>].json``.

        Beside the checkpoint. A size per axis is written ``-k3x9x9``, an object scale ``-s0.595``,
        BatchNorm statistics recomputed over N batches ``-bn<N>``.
        """
        if isinstance(envelope_size, (tuple, list)):
            envelope_size = "x".join(str(k) for k in envelope_size)
        suffix = "" if envelope_size is None else f"-k{envelope_size}"
        suffix += "" if object_scale is None else f"-s{object_scale:g}"
        suffix += f"-bn{recalibrate_bn}" if recalibrate_bn else ""
        return Path(checkpoint).parent / f"eval-{Path(checkpoint).stem}{suffix}.json"

    @staticmethod
    def probe_file(checkpoint: Path, dataset: str) -> Path:
        """Where ``envconv probe`` of ``checkpoint`` writes: ``probe-<checkpoint>[-digits].json`` beside it."""
        return Path(checkpoint).parent / f"probe-{Path(checkpoint).stem}{'-digits' if dataset == 'digits' else ''}.json"

    @property
    def finished(self) -> bool:
        """The run trained to its end (``summary.json`` exists)."""
        return self.summary_file.is_file()

    def checkpoint(self) -> Path:
        """The checkpoint to analyse: ``last.pt``, else ``best.pt``.

        Raises:
            FileNotFoundError: the directory holds neither.
        """
        found = [p for p in (self.last, self.best) if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{self.path} holds no {self.LAST} or {self.BEST}: not a run directory of "
                                    f"envconv train")
        return found[0]

    def has_records(self) -> bool:
        """Whether ``metrics.csv`` exists: the directory is a training run with a history."""
        return self.metrics_file.is_file()

    def metrics(self) -> List[Dict[str, str]]:
        """The rows of ``metrics.csv`` (empty when there is none)."""
        if not self.metrics_file.is_file():
            return []
        with open(self.metrics_file, newline="") as f:
            return list(csv.DictReader(f))

    def epoch_seconds(self) -> List[float]:
        """Training seconds of each finished epoch (``metrics.csv``)."""
        return [float(row["seconds"]) for row in self.metrics() if row.get("seconds")]

    def sigma_records(self) -> List[Dict[str, Any]]:
        """``sigma.json``: ``[{"epoch": e, "sigma": {layer: [sigma per channel]}}, ...]`` (empty when absent)."""
        return json.loads(self.sigma_file.read_text()) if self.sigma_file.is_file() else []

    def read_json(self, file: Union[str, os.PathLike]) -> Optional[Any]:
        """A JSON file of the run, ``None`` when absent.

        A bare name (``RunDir.FAILED``) is taken in the run directory, a path (``run.summary_file``,
        :meth:`eval_file`) as it is.
        """
        path = Path(file)
        if len(path.parts) == 1:
            path = self.path / path
        return json.loads(path.read_text()) if path.is_file() else None

    def clear_stale_records(self) -> List[str]:
        """Remove ``metrics.csv`` / ``sigma.json`` of a run without ``last.pt`` (nothing to resume); their names."""
        if self.last.exists():
            return []
        stale = [name for name in (self.METRICS, self.SIGMA) if (self.path / name).exists()]
        for name in stale:
            (self.path / name).unlink()
        return stale

    # --- starting, locking, forking ---------------------------------------------------------------------

    def prepare(self, resume: bool, is_main: bool = True) -> None:
        """Check that a fresh run may start here (nothing recorded yet) and create the directory.

        Raises:
            NotADirectoryError: the path is a file.
            FileExistsError: a fresh run in a directory that holds a run.
        """
        if self.path.is_symlink() and not self.path.exists():
            raise FileNotFoundError(f"output.dir {self.path} is a symbolic link to {os.readlink(self.path)}, "
                                    f"which does not exist")
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"output.dir {self.path} is a file, not a directory")
        held = [name for name in self.RECORDS if (self.path / name).exists()] if not resume else []
        if held:
            hint = (f"resume it with --resume {self.path}" if self.LAST in held
                    else "delete them to start afresh (no checkpoint to resume from)")
            raise FileExistsError(f"{self.path} already holds a run ({', '.join(held)}); {hint}, "
                                  f"or choose another directory with --set output.dir=...")
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    def check_writable(self) -> None:
        """Raise ``PermissionError`` naming the directory unless files can be created in it (before long work)."""
        check_writable(self.path)

    def remove_stale_temporaries(self) -> List[str]:
        """Remove the temporary files (``NAME.tmp-PID``) of atomic writes whose process is gone; their names."""
        removed = []
        for path in self.path.glob("*.tmp-*"):
            pid = path.name.rpartition(".tmp-")[2]
            if pid.isdigit() and not _process_alive(int(pid)):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    @contextlib.contextmanager
    def lock(self, is_main: bool = True) -> Iterator[None]:
        """Hold the trainer's lock (main process): two trainers never write one run directory.

        A directory left empty (a run that failed before writing anything) is removed on exit.

        Raises:
            RunInUseError: another process holds it.
        """
        if not is_main:
            yield
            return
        try:
            with try_lock(self.lock_file) as locked:
                if not locked:
                    raise RunInUseError(f"{self.path} is in use: another envconv train holds {self.lock_file}")
                yield
        finally:
            if self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()

    def claim(self) -> ContextManager[bool]:
        """A study process's lock on the run; yields False (holding nothing) when another process has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        return try_lock(self.path / self.STUDY_LOCK)

    def fork(self, target: "RunDir") -> None:
        """Copy this run's checkpoints and logs into the new directory ``target``.

        This is ``--resume`` with another ``output.dir``: the resumed training writes there and
        this run is left untouched.

        Raises:
            FileExistsError: ``target`` already holds a run.
            FileNotFoundError: this run has no ``last.pt``.
        """
        if target.last.exists() or target.config_file.exists():
            raise FileExistsError(f"cannot fork {self.path} into {target.path}: it already holds a run")
        if not self.last.is_file():
            raise FileNotFoundError(f"{self.path} has no {self.LAST} to resume from")
        target.path.mkdir(parents=True, exist_ok=True)
        for name in self.FORKED:
            if (self.path / name).is_file():
                shutil.copy2(self.path / name, target.path / name)

    def check_resumable(self) -> None:
        """Raises ``FileNotFoundError`` unless the directory has a config and a finished epoch to resume."""
        if not self.config_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a run directory (no {self.CONFIG})")
        if not self.last.is_file():
            raise FileNotFoundError(f"{self.path} has no finished epoch to resume ({self.LAST} is missing); start "
                                    f"it afresh with: envconv train --config {self.config_file} "
                                    f"--set output.dir={self.path}")

    # --- its model ---------------------------------------------------------------------------------------

    def envelopes(self, epoch: Optional[int] = None, initial: bool = False) -> List[EnvelopeInfo]:
        """The run's envelopes at an epoch (default: its last), from its small files alone.

        The layers, paths and sizes come from a fresh model of the run's ``config.yaml``, the sigmas
        from ``sigma.json`` (``initial``: the fresh model's, before training); no checkpoint is
        read, so committed run directories (``results/``) give the same rows on any machine.

        Raises:
            FileNotFoundError: the run directory lacks ``config.yaml`` or ``sigma.json``.
            ValueError: ``sigma.json`` has no record of ``epoch``.
        """
        for path in (self.config_file, self.sigma_file):
            if not path.is_file():
                raise FileNotFoundError(f"{self.path} is not a run directory with records ({path.name} is missing)")
        if initial:
            return envelopes(create_model_from_config(resolve_config(self.config_file)["model"]))
        record = next((r for r in reversed(self.sigma_records()) if epoch is None or r["epoch"] == epoch), None)
        if record is None:
            raise ValueError(f"{self.sigma_file} has no record of epoch {epoch}")
        model = create_model_from_config(resolve_config(self.config_file)["model"])
        return [_with_sigmas(row, record["sigma"][row.name]) for row in envelopes(model)]


def _with_sigmas(row: EnvelopeInfo, sigmas: List[float]) -> EnvelopeInfo:
    """``row`` with the recorded sigmas; a sigma per axis is recorded channel after channel (C x n values)."""
    sigmas = tuple(sigmas)
    if row.axis_sigmas is None:
        return replace(row, sigmas=sigmas)
    n = len(row.axis_sigmas)
    return replace(row, sigmas=sigmas, axis_sigmas=tuple(sigmas[axis::n] for axis in range(n)))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or a platform without kill(0)
        return True
    return True


def check_writable(directory: Union[str, os.PathLike]) -> None:
    """Raise ``PermissionError`` naming ``directory`` unless a file can be created in it.

    A directory that does not exist yet is checked at its nearest existing parent, where it
    would be created. Called before an evaluation, a probe or an analysis writes its result, so
    that a read-only run directory is reported before the work, not after it.
    """
    directory = Path(directory)
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write into {directory}: {err.strerror or err}") from err


def checkpoint_of(path: Union[str, os.PathLike]) -> Path:
    """``path`` if it is a file, else the checkpoint of the run directory ``path`` (:meth:`RunDir.checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        return RunDir(path).checkpoint()
    if not path.is_file():
        raise FileNotFoundError(f"no run directory or checkpoint {path}")
    return path


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load a training checkpoint (``weights_only=True``) and check that it is one.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt, not a torch file, or lacks :data:`CHECKPOINT_KEYS`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; pass a checkpoint file (e.g. {os.path.join(path, RunDir.LAST)})")
    ckpt = load_torch_file(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, Mapping) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not an envconv training checkpoint (missing {missing}); "
                         f"for a bare state dict use `envconv envelopes`")
    ckpt = dict(ckpt)
    try:  # a foreign or hand-made config must fail here, naming the file, not deep inside a command
        ckpt["config"] = validate_config(ckpt["config"]) if isinstance(ckpt["config"], Mapping) else None
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: its config is not a valid envconv config ({err})") from err
    if ckpt["config"] is None or not isinstance(ckpt["epoch"], int):
        raise ValueError(f"{path}: its config or epoch is not an envconv training checkpoint's")
    return ckpt


def model_from_checkpoint(path: Union[str, os.PathLike],
                          device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the model of a training checkpoint from its config and load its weights.

    Args:
        path: a checkpoint written by ``envconv train`` (``last.pt`` or ``best.pt``).
        device: where the model goes.

    Returns:
        ``(model, checkpoint)``: the model in eval mode on ``device``, and the checkpoint dict
        (:func:`load_checkpoint`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an envconv checkpoint, or its weights do not fit its config's model.
    """
    ckpt = load_checkpoint(path)
    model = create_model_from_config(ckpt["config"]["model"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise ValueError(f"{os.fspath(path)}: the weights do not fit the model its config describes ({err})") from err
    return model.to(device).eval(), ckpt
