"""95% intervals for every headline figure (evaluation.md §0): bootstrap, Student's t, and
exact intervals for shares; and the three-way verdict read from an interval of a difference.

`bootstrap` resamples one or more index dimensions at once (records; or seeds and held-out
examples) and hands the statistic the resampled indices, so a paired comparison is a statistic
that evaluates both methods on the same indices. A share (k of n records) gets the
Clopper-Pearson interval, which stays honest at 0 and 1 where a bootstrap collapses (0 of 15
kept records corrupted is not a certainty of 0); `widened` makes a bootstrap interval of a
difference contain such an exact one. Pure numpy: no torch, no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

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


VERDICTS = ("better", "tied", "worse")
UNDECIDED = "n/a"  # an interval that could not be formed (e.g. an AUROC with no corrupted record)


def verdict(difference: Interval | dict, higher_is_better: bool = True) -> str:
    """`better`, `tied` or `worse` by whether the 95% interval of a difference (method minus
    reference) excludes zero, and on which side; `n/a` where the interval is not finite."""
    low, high = ((difference.low, difference.high) if isinstance(difference, Interval)
                 else (difference["low"], difference["high"]))
    if not (math.isfinite(low) and math.isfinite(high)):
        return UNDECIDED
    if low <= 0 <= high:
        return "tied"
    return "better" if (low > 0) == higher_is_better else "worse"


def shifted(interval: Interval, by: float) -> Interval:
    """The interval of `x + by` from that of `x` (e.g. a share minus a constant rate)."""
    return Interval(interval.estimate + by, interval.low + by, interval.high + by)


def bounded(interval: Interval, low: float, high: float) -> Interval:
    """The interval cut to the range its measure can take (a t interval over a few seeds of a
    share or an AUROC can reach past 0 or 1)."""
    def cut(v: float) -> float:
        return min(max(v, low), high) if math.isfinite(v) else v

    return Interval(interval.estimate, cut(interval.low), cut(interval.high))


def widened(interval: Interval, to_contain: Interval) -> Interval:
    """`interval` (its estimate kept) stretched to contain `to_contain` where that is wider on
    either side: a bootstrap interval never narrower than the exact one beside it. A bound that
    is not finite on one side is taken from the other interval."""
    def pick(a: float, b: float, outer) -> float:
        finite = [v for v in (a, b) if math.isfinite(v)]
        return float(outer(finite)) if finite else math.nan

    return Interval(interval.estimate, pick(interval.low, to_contain.low, min),
                    pick(interval.high, to_contain.high, max))


def clopper_pearson(successes: int | np.ndarray, trials: int,
                    level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) bounds of a binomial share, vectorised over `successes` (each
    out of the same `trials`): the lower bound is the share at which `successes` or more has
    probability (1 - level) / 2, the upper the share at which `successes` or fewer has; 0 and 1
    at the edges. Its coverage is at least `level` at every true share (the tests simulate it)."""
    x = np.atleast_1d(np.asarray(successes, dtype=np.int64))
    if trials < 1 or (x < 0).any() or (x > trials).any():
        raise ValueError(f"successes must lie in [0, {trials}] and trials be at least 1")
    alpha = (1 - level) / 2
    j = np.arange(trials + 1)
    log_choose = np.concatenate(
        [[0.0], np.cumsum(np.log(trials - j[1:] + 1.0) - np.log(j[1:]))])

    def at_least(p: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """P(X >= counts) for X ~ Binomial(trials, p), row by row."""
        log_pmf = log_choose + j * np.log(p)[:, None] + (trials - j) * np.log1p(-p)[:, None]
        return np.where(j >= counts[:, None], np.exp(log_pmf), 0.0).sum(axis=1)

    def solve(increasing, target: float, counts: np.ndarray) -> np.ndarray:
        low, high = np.zeros(len(counts)), np.ones(len(counts))
        for _ in range(48):  # bisection to 2^-48
            middle = (low + high) / 2
            above = increasing(middle, counts) > target
            high, low = np.where(above, middle, high), np.where(above, low, middle)
        return (low + high) / 2

    lower, upper = np.zeros(len(x)), np.ones(len(x))
    inner = x > 0
    if inner.any():  # P(X >= x; p) rises with p: the p where it reaches alpha
        lower[inner] = solve(at_least, alpha, x[inner])
    inner = x < trials
    if inner.any():  # P(X <= x; p) = 1 - P(X >= x + 1; p) falls with p: where it is alpha
        upper[inner] = solve(at_least, 1 - alpha, x[inner] + 1)
    return lower, upper


@lru_cache(maxsize=4096)
def share_interval(successes: int, trials: int, level: float = LEVEL) -> Interval:
    """`successes / trials` with its Clopper-Pearson interval (NaN where there are no trials)."""
    if trials < 1:
        return Interval(math.nan, math.nan, math.nan)
    low, high = clopper_pearson(successes, trials, level)
    return Interval(successes / trials, float(low[0]), float(high[0]))


def share_difference(a: Interval, b: Interval) -> Interval:
    """a - b for two shares with their (Clopper-Pearson) intervals, by Newcombe's
    square-and-add: honest at the boundaries, and conservative for two selections from one
    pool (their overlap only narrows the true spread)."""
    difference = a.estimate - b.estimate
    return Interval(difference,
                    difference - math.hypot(a.estimate - a.low, b.high - b.estimate),
                    difference + math.hypot(a.high - a.estimate, b.estimate - b.low))


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
    return np.concatenate(list(resample_weight_blocks(n, resamples, seed, resamples)))


def resample_weight_blocks(n: int, resamples: int = RESAMPLES, seed: int = 0,
                           rows: int | None = None):
    """`resample_weights` in blocks of at most `rows` resamples (by default about 200,000
    numbers a block, which stay in cache), the same draws in the same order."""
    rng = np.random.default_rng(seed)
    rows = rows or max(1, min(resamples, 200_000 // max(n, 1)))
    for start in range(0, resamples, rows):
        yield np.stack([np.bincount(rng.integers(0, n, n), minlength=n)
                        for _ in range(min(rows, resamples - start))]).astype(np.float64)


class Ranking:
    """One score's ranking of n records, prepared once so that AUROC, AUPRC and the share of a
    label among the top-k are O(n) for any record weights (a bootstrap resample's
    multiplicities). Non-finite scores rank lowest; tied scores form one group. Weights may be
    one row ([n]: a number back) or many ([resamples, n]: one number per row, vectorised)."""

    def __init__(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        self.finite = np.isfinite(scores)
        values = np.where(self.finite, scores, -np.inf)
        self.groups, self.group_of = np.unique(values, return_inverse=True)  # ascending
        candidates = np.flatnonzero(self.finite)
        # highest first, ties by position: the order `select_top` takes records in
        self.order = candidates[np.lexsort((candidates, -scores[candidates]))]

    def sums(self, weights: np.ndarray) -> np.ndarray:
        """[rows, groups]: each row's weight per tied group, lowest score first."""
        rows, groups = len(weights), len(self.groups)
        slots = (np.arange(rows)[:, None] * groups + self.group_of[None, :]).ravel()
        return np.bincount(slots, weights=weights.ravel(),
                           minlength=rows * groups).reshape(rows, groups)

    def auroc(self, positive: np.ndarray, weights: np.ndarray | None = None):
        """P(score of a positive > score of a negative), ties one half (Mann-Whitney U)."""
        w, one = _rows(weights, len(positive))
        return _back(auroc_of_sums(self.sums(w * positive), self.sums(w * ~positive)), one)

    def auprc(self, positive: np.ndarray, weights: np.ndarray | None = None):
        """Average precision of ranking `positive` first (highest score first, a tied group
        one block)."""
        w, one = _rows(weights, len(positive))
        return _back(precision_of_sums(self.sums(w * positive)[:, ::-1],
                                       self.sums(w)[:, ::-1]), one)

    def top_share(self, marked: np.ndarray, ratio: float, weights: np.ndarray | None = None):
        """The share of `marked` records among the top `ratio` of all records (rounded half up,
        as `select_top`); with weights, a record drawn w times counts w times."""
        w, one = _rows(weights, len(marked))
        return _back(self.top_shares(marked, [ratio], w)[:, 0], one)

    def top_shares(self, marked: np.ndarray, ratios: Sequence[float],
                   weights: np.ndarray) -> np.ndarray:
        """[rows, ratios]: `top_share` at several ratios for [rows, n] weights at once."""
        out = np.full((len(weights), len(ratios)), math.nan)
        if len(self.order) == 0:
            return out
        counts = weights[:, self.order]
        taken = np.cumsum(counts, axis=1)
        hits = np.cumsum(counts * marked[self.order], axis=1)
        rows, total = np.arange(len(weights)), weights.sum(axis=1)
        for j, ratio in enumerate(ratios):
            k = np.floor(ratio * total + 0.5)
            last = np.minimum((taken < k[:, None]).sum(axis=1), len(self.order) - 1)
            excess = np.maximum(0.0, taken[rows, last] - k)  # copies of the last one not kept
            kept = taken[rows, last] - excess
            found = hits[rows, last] - excess * marked[self.order[last]]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, j] = np.where(k > 0, found / kept, math.nan)
        return out


def auroc_of_sums(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """AUROC per row from [rows, groups] weights of positives and negatives per tied group
    (lowest score first): P(positive above negative), ties one half; NaN without either."""
    n_pos, n_neg = positive.sum(axis=1), negative.sum(axis=1)
    below = np.cumsum(negative, axis=1) - negative
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (positive * (below + negative / 2)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), value, math.nan)


def precision_of_sums(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Average precision per row from [rows, groups] hits and sizes per tied group, in the
    order the groups are taken (a group one block); NaN without a hit."""
    found = hits.sum(axis=1)
    precision = np.cumsum(hits, axis=1) / np.maximum(np.cumsum(sizes, axis=1), 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (precision * hits).sum(axis=1) / found
    return np.where(found > 0, value, math.nan)


def _rows(weights: np.ndarray | None, n: int) -> tuple[np.ndarray, bool]:
    """Weights as [rows, n], and whether one row was given (or none: every record once)."""
    if weights is None:
        return np.ones((1, n)), True
    weights = np.asarray(weights, dtype=np.float64)
    return (weights[None, :], True) if weights.ndim == 1 else (weights, False)


def _back(values: np.ndarray, one: bool):
    return float(values[0]) if one else values


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U).

    Non-finite scores rank lowest: a method never selects them.
    """
    return Ranking(scores).auroc(np.asarray(positive, dtype=bool))


def auprc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ranking `positive` first by `scores` (highest first); tied scores
    form one block, so the order of ties does not matter. Non-finite scores rank lowest."""
    return Ranking(scores).auprc(np.asarray(positive, dtype=bool))
