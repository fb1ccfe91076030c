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
              resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
              keep_infinite: bool = False) -> Interval:
    """Percentile bootstrap of `statistic(*indices)`, one index array per dimension of `sizes`.

    The estimate is the statistic on the identity indices. Resamples where the statistic is not
    finite (e.g. an AUROC drawn with no positive) are left out of the percentiles; with
    `keep_infinite`, an infinite draw (e.g. "never reached") is kept and can be a bound.
    """
    rng = np.random.default_rng(seed)
    estimate = float(statistic(*(np.arange(n) for n in sizes)))
    draws = [statistic(*(rng.integers(0, n, n) for n in sizes)) for _ in range(resamples)]
    return percentile_interval(estimate, np.array(draws, dtype=np.float64), level,
                               keep_infinite)


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


def percentile_interval(estimate: float, draws: np.ndarray, level: float = LEVEL,
                        keep_infinite: bool = False) -> Interval:
    """`estimate` with the percentile interval of its bootstrap `draws` (non-finite draws
    dropped; with `keep_infinite` only NaN ones, and the percentiles are draws themselves)."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[~np.isnan(draws)] if keep_infinite else draws[np.isfinite(draws)]
    if len(draws) == 0:
        return Interval(float(estimate), math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail],
                              method="nearest" if keep_infinite else "linear")
    return Interval(float(estimate), float(low), float(high))


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, n] bootstrap multiplicities: how often each of n records was drawn."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                     for _ in range(resamples)]).astype(np.float64)


class Ranking:
    """One score's ranking of n records, prepared once so that AUROC, AUPRC and the share of a
    label among the top-k are O(n) for any record weights (a bootstrap resample's
    multiplicities). Non-finite scores rank lowest; tied scores form one group."""

    def __init__(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        self.finite = np.isfinite(scores)
        values = np.where(self.finite, scores, -np.inf)
        self.groups, self.group_of = np.unique(values, return_inverse=True)  # ascending
        candidates = np.flatnonzero(self.finite)
        # highest first, ties by position: the order `select_top` takes records in
        self.order = candidates[np.lexsort((candidates, -scores[candidates]))]

    def _sums(self, weights: np.ndarray) -> np.ndarray:
        return np.bincount(self.group_of, weights=weights, minlength=len(self.groups))

    def auroc(self, positive: np.ndarray, weights: np.ndarray | None = None) -> float:
        """P(score of a positive > score of a negative), ties one half (Mann-Whitney U)."""
        w = np.ones(len(positive)) if weights is None else weights
        pos, neg = self._sums(w * positive), self._sums(w * ~positive)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return math.nan
        below = np.cumsum(neg) - neg
        return float((pos * (below + neg / 2)).sum() / (n_pos * n_neg))

    def auprc(self, positive: np.ndarray, weights: np.ndarray | None = None) -> float:
        """Average precision of ranking `positive` first (highest score first, a tied group
        one block)."""
        w = np.ones(len(positive)) if weights is None else weights
        hits, sizes = self._sums(w * positive)[::-1], self._sums(w)[::-1]
        if hits.sum() == 0:
            return math.nan
        precision = np.cumsum(hits) / np.maximum(np.cumsum(sizes), 1e-300)
        return float((precision * hits).sum() / hits.sum())

    def top_share(self, marked: np.ndarray, ratio: float,
                  weights: np.ndarray | None = None) -> float:
        """The share of `marked` records among the top `ratio` of all records (rounded half up,
        as `select_top`); with weights, a record drawn w times counts w times."""
        w = np.ones(len(marked)) if weights is None else weights
        k = math.floor(ratio * w.sum() + 0.5)
        taken = np.cumsum(w[self.order])
        if k == 0 or len(taken) == 0:
            return math.nan
        last = min(int(np.searchsorted(taken, k)), len(taken) - 1)
        counts = w[self.order[:last + 1]].copy()
        counts[-1] -= max(0.0, taken[last] - k)
        return float((counts * marked[self.order[:last + 1]]).sum() / counts.sum())


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U).

    Non-finite scores rank lowest: a method never selects them.
    """
    return Ranking(scores).auroc(np.asarray(positive, dtype=bool))


def auprc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ranking `positive` first by `scores` (highest first); tied scores
    form one block, so the order of ties does not matter. Non-finite scores rank lowest."""
    return Ranking(scores).auprc(np.asarray(positive, dtype=bool))
