"""Small statistics for the study: mean and spread over seeds, paired differences with a 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

__all__ = ["Summary", "summarize", "t_quantile_975", "paired_difference"]

# Two-sided 95% quantiles of Student's t (t_{0.975, df}) for df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Student's t quantile at 0.975 (a table to df = 30, then the Cornish-Fisher expansion)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass
class Summary:
    """Mean, sample standard deviation (ddof = 1; None for one value) and count."""

    mean: float
    std: Optional[float]
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})" if self.std is not None else f"{self.mean:.2f} (n=1)"


def summarize(values: Sequence[float]) -> Optional[Summary]:
    values = [float(v) for v in values]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return Summary(mean, std, len(values))


@dataclass
class Difference:
    """Mean of the paired differences a - b with its 95% interval (None with fewer than 2 pairs)."""

    mean: float
    low: Optional[float]
    high: Optional[float]
    n: int

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.mean:+.2f} (n={self.n}, no interval)"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] (n={self.n})"


def paired_difference(a: Dict[int, float], b: Dict[int, float]) -> Optional[Difference]:
    """``a - b`` over the seeds both have (keys are seeds): mean and the t interval of the mean."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    s = summarize(diffs)
    if s.std is None:
        return Difference(s.mean, None, None, 1)
    half = t_quantile_975(s.n - 1) * s.std / math.sqrt(s.n)
    return Difference(s.mean, s.mean - half, s.mean + half, s.n)
