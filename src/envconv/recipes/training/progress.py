"""What a run reports: a progress bar, per-epoch metrics and sigmas, and TensorBoard scalars."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO, Union

from tqdm import tqdm

from ...state_dict import atomic_write_bytes
from ..rundir import RunDir

__all__ = ["progress_bar", "Heartbeat", "RunLog", "METRICS_COLUMNS"]

METRICS_COLUMNS = ("epoch", "lr", "train_loss", "train_top1_err", "train_top5_err", "val_loss", "val_top1_err",
                   "val_top5_err", "seconds", "images_per_s")


def progress_bar(total: int, desc: str, enabled: bool, stream: Optional[TextIO] = None, heartbeat: bool = False,
                 later_steps: int = 0):
    """A tqdm bar of ``total`` steps on ``stream`` (stderr), cleared when closed.

    Not ``enabled`` (no terminal): a :class:`Heartbeat` line every 30 s on stdout if ``heartbeat``,
    else nothing; ``later_steps``: the steps of the run after these (the heartbeat's run ETA).
    """
    if not enabled and heartbeat:
        return Heartbeat(total, desc, later_steps=later_steps)
    return tqdm(total=total, desc=desc, disable=not enabled, file=stream or sys.stderr, leave=False,
                dynamic_ncols=True, unit="step")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Heartbeat:
    """What a progress bar says, as a line every ``every`` seconds: for logs, CI and ``make demo | tee``.

    Takes a bar's ``update`` / ``set_postfix`` calls; prints ``desc: step/total (percent), rate,
    elapsed, ETA`` and the last postfix (loss, error) once ``every`` seconds have passed since the
    start or the last line. With ``later_steps`` (the steps of the run after these), the ETA of
    the whole run at this rate follows.
    """

    #: Seconds between lines when ``every`` is not given.
    EVERY = 30.0

    def __init__(self, total: int, desc: str, every: Optional[float] = None, stream: Optional[TextIO] = None,
                 clock=time.monotonic, later_steps: int = 0) -> None:
        self.total, self.desc, self.stream, self.clock = total, desc, stream, clock
        self.every = self.EVERY if every is None else every
        self.later_steps = later_steps
        self.n, self.postfix = 0, {}
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            elapsed = now - self.start
            rate = self.n / elapsed if elapsed > 0 else 0.0
            eta = _duration((self.total - self.n) / rate) if rate > 0 else "?"
            if self.later_steps and rate > 0:
                eta += f" (run {_duration((self.total - self.n + self.later_steps) / rate)})"
            extra = "".join(f", {k} {v:.4g}" for k, v in self.postfix.items())
            print(f"  {self.desc.strip()}: step {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), "
                  f"{rate:.2f} steps/s, {_duration(elapsed)} elapsed, ETA {eta}{extra}",
                  file=self.stream or sys.stdout, flush=True)

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = values

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *exc) -> None:
        return None


class RunLog:
    """Per-epoch records of a run directory: the metrics rows and the sigmas (:class:`RunDir`'s files).

    Only the main process writes (``enabled``). The sigma file is a list of
    ``{"epoch": e, "sigma": {layer: [sigma per channel]}}``; both files are rewritten atomically.
    """

    def __init__(self, run: Union[RunDir, str, os.PathLike], enabled: bool, tensorboard: bool = True) -> None:
        run = run if isinstance(run, RunDir) else RunDir(run)
        self.run, self.enabled = run, enabled
        self.metrics_path, self.sigma_path = run.metrics_file, run.sigma_file
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(run.tensorboard_dir))

    def rows(self) -> List[Dict[str, str]]:
        """The metrics rows so far (empty when there is none)."""
        return self.run.metrics()

    def truncate(self, last_epoch: int) -> None:
        """Forget records after ``last_epoch`` (a resume repeats those epochs)."""
        if not self.enabled:
            return
        self._write_rows([r for r in self.rows() if int(r["epoch"]) <= last_epoch])
        self._write_sigmas([e for e in self._sigmas() if e["epoch"] <= last_epoch])

    def log_epoch(self, row: Dict[str, Any], sigmas: Dict[str, List[float]]) -> None:
        if not self.enabled:
            return
        self._write_rows(self.rows() + [{k: _format(row.get(k)) for k in METRICS_COLUMNS}])
        self._write_sigmas(self._sigmas() + [{"epoch": row["epoch"], "sigma": sigmas}])
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, float) and value == value:
                    self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
            for layer, values in sigmas.items():
                self.writer.add_scalar(f"sigma_mean/{layer}", sum(values) / len(values), row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _sigmas(self) -> List[Dict[str, Any]]:
        return self.run.sigma_records()

    def _write_sigmas(self, entries: List[Dict[str, Any]]) -> None:
        atomic_write_bytes(json.dumps(entries, indent=1).encode(), self.sigma_path)

    def _write_rows(self, rows: List[Dict[str, str]]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(text.getvalue().encode(), self.metrics_path)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
