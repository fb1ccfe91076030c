"""95% intervals for every headline figure (evaluation.md §0): bootstrap and Student's t.

`bootstrap` resamples one or more index dimensions at once (records; or seeds and held-out
examples) and hands the statistic the resampled indices, so a paired comparison is a statistic
that evaluates both methods on the same indices. Pure numpy: no torch, no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
# Student's t, two-sided 95% (the 0.975 quantile) by degrees of freedom; 1.96 beyond the table.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% interval."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(statistic: Callable[..., float], sizes: Sequence[int], *,
              resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> Interval:
    """Percentile bootstrap of `statistic(*indices)`, one index array per dimension of `sizes`.

    The estimate is the statistic on the identity indices. Resamples where the statistic is not
    finite (e.g. an AUROC drawn with no positive) are left out of the percentiles.
    """
    rng = np.random.default_rng(seed)
    estimate = float(statistic(*(np.arange(n) for n in sizes)))
    draws = np.array([statistic(*(rng.integers(0, n, n) for n in sizes))
                      for _ in range(resamples)], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return Interval(estimate, math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def t_interval(values: Sequence[float]) -> Interval:
    """Mean over independent runs (seeds) with Student's t 95% interval; one run: no width."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan)
    df = len(values) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    half = t * float(values.std(ddof=1)) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U).

    Non-finite scores rank lowest: a method never selects them.
    """
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ranking `positive` first by `scores` (highest first); tied scores
    form one block, so the order of ties does not matter. Non-finite scores rank lowest."""
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return math.nan
    values, inverse = np.unique(-scores, return_inverse=True)  # block 0 = highest score
    hits = np.bincount(inverse, weights=positive, minlength=len(values))
    sizes = np.bincount(inverse, minlength=len(values))
    precision = np.cumsum(hits) / np.cumsum(sizes)
    return float((precision * hits).sum() / n_pos)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2)[inverse]
