"""Small statistics for the study: mean and spread over seeds, paired differences with a 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

__all__ = ["Summary", "Difference", "summarize", "t_quantile_975", "paired_difference"]

def t_quantile_975(df: int) -> float:
    """Student's t quantile at 0.975 (``scipy.stats.t.ppf``): the 95% two-sided interval's factor.

    Example:
        >>> round(t_quantile_975(2), 3), round(t_quantile_975(10), 3)
        (4.303, 2.228)
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    try:
        from scipy import stats
    except ImportError as err:
        raise ImportError("the study's intervals need scipy: pip install 'envconv[study]'") from err
    return float(stats.t.ppf(0.975, df))


@dataclass
class Summary:
    """Mean, sample standard deviation (ddof = 1; None for one value) and count."""

    mean: float
    std: Optional[float]
    n: int

    def __str__(self) -> str:
        return self.text()

    def text(self, digits: int = 2) -> str:
        """``mean ± std (n=N)`` with ``digits`` decimals (``mean (n=1)`` for one value)."""
        if self.std is None:
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"


def summarize(values: Sequence[float]) -> Optional[Summary]:
    """Mean, sample standard deviation and count of ``values`` (None when empty)."""
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
