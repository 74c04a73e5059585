"""Paired timing: every figure is a ratio of two callables measured in adjacent, interleaved pairs.

The machine is noisy (shared cores, memory-allocation effects), so absolute times mean
little. For each repeat we time ``a`` and ``b`` back to back, alternating which goes
first, and keep the ratio ``t_a / t_b``; the result is the median of those ratios with
their quartiles and extremes.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional


@dataclass
class Ratio:
    """Median and spread of per-pair ratios ``t_a / t_b``, plus the median times (ms)."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    repeats: int
    ms_a: float
    ms_b: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.median:.3f}x [{self.q1:.3f}-{self.q3:.3f}]"


def _time(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def cuda_event_time(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    """Seconds of ``fn`` on the current CUDA stream, between two CUDA events (the host does not wait in between)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _quartiles(values: List[float]):
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def paired_ratio(a: Callable[[], object], b: Callable[[], object], repeats: int = 15, warmup: int = 2,
                 sync: Callable[[], None] = lambda: None,
                 timer: Optional[Callable[[Callable[[], object], Callable[[], None]], float]] = None) -> Ratio:
    """Time ``a`` and ``b`` in ``repeats`` adjacent pairs (order alternating); the ratio ``a / b``.

    ``timer(fn, sync)`` returns the seconds of one call (default: wall clock between two
    ``sync()`` calls; :func:`cuda_event_time` for GPU work).
    """
    _time_one = timer or _time
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        a()
        b()
    ratios, times_a, times_b = [], [], []
    gc.disable()
    try:
        for i in range(repeats):
            if i % 2 == 0:
                ta, tb = _time_one(a, sync), _time_one(b, sync)
            else:
                tb, ta = _time_one(b, sync), _time_one(a, sync)
            ratios.append(ta / tb)
            times_a.append(ta)
            times_b.append(tb)
    finally:
        gc.enable()
    q1, q3 = _quartiles(ratios)
    return Ratio(statistics.median(ratios), q1, q3, min(ratios), max(ratios), repeats,
                 1e3 * statistics.median(times_a), 1e3 * statistics.median(times_b))
