"""What a page summarises, computed in Python over whole arrays (numpy only, pure functions):
histograms with a stated range, quantiles, rank agreement with its interval, top-k overlap,
a share with its interval, and unscorable reasons grouped."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

Z95 = 1.959963984540054
BINS = 40
QUANTILES = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Histogram:
    """Counts of one or more groups over shared bins. Values outside [edges[0], edges[-1]]
    (a heavy tail cut off so the bulk stays readable) are counted in `below` and `above`;
    `missing` counts the values that are not finite."""

    edges: np.ndarray
    counts: dict[str, np.ndarray]
    below: dict[str, int] = field(default_factory=dict)
    above: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)

    def outside_note(self) -> str:
        """One line on what the bins leave out ("" if nothing)."""
        parts = []
        for name in self.counts:
            low, high = self.below.get(name, 0), self.above.get(name, 0)
            if low or high:
                parts.append(f"{name}: {low:,} below and {high:,} above the range shown")
        return "; ".join(parts)


def histogram(values: np.ndarray, groups: dict[str, np.ndarray] | None = None,
              bins: int = BINS, integer: bool = False) -> Histogram:
    """Histogram of `values` (each group a boolean mask over them; default: all). The range is
    the finite values' span, or their 0.5-99.5 percentile span where the tails stretch it more
    than tenfold; integer data get whole-number bins where few are needed."""
    values = np.asarray(values, dtype=np.float64)
    groups = groups if groups is not None else {"all": np.ones(len(values), dtype=bool)}
    finite = np.isfinite(values)
    edges = _edges(values[finite], bins, integer)
    counts, below, above, missing = {}, {}, {}, {}
    for name, mask in groups.items():
        chosen = values[mask & finite]
        counts[name] = np.histogram(chosen, bins=edges)[0]
        below[name] = int((chosen < edges[0]).sum())
        above[name] = int((chosen > edges[-1]).sum())
        missing[name] = int((mask & ~finite).sum())
    return Histogram(edges, counts, below, above, missing)


def _edges(finite: np.ndarray, bins: int, integer: bool) -> np.ndarray:
    if len(finite) == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = float(finite.min()), float(finite.max())
    if len(finite) > 200:
        inner_low, inner_high = np.percentile(finite, [0.5, 99.5])
        if (high - low) > 10 * max(inner_high - inner_low, 1e-300):
            low, high = float(inner_low), float(inner_high)
    if integer:
        low, high = math.floor(low), math.ceil(high)
        if high - low + 1 <= bins:
            return np.arange(low, high + 2, dtype=np.float64) - 0.5
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def quantiles(values: np.ndarray, mask: np.ndarray) -> list[float]:
    """The 10th, 50th and 90th percentiles of the finite `values` under `mask` (NaN if none)."""
    chosen = np.asarray(values, dtype=np.float64)[mask]
    chosen = chosen[np.isfinite(chosen)]
    if not len(chosen):
        return [math.nan] * len(QUANTILES)
    return [float(v) for v in np.quantile(chosen, QUANTILES)]


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    result = np.empty(len(values), dtype=np.float64)
    result[order] = np.repeat(average, ends - starts)
    return result


@dataclass(frozen=True)
class Agreement:
    """Spearman's rho of two rankings over the records both score, with its 95% interval
    (Fisher's z with the Fieller-Hartley-Pearson variance 1.06 / (n - 3)), and the overlap of
    their top `k` against the k/n that two unrelated selections share on average."""

    records: int
    rho: float
    low: float
    high: float
    k: int
    overlap: int
    expected_overlap: float


def agreement(a: np.ndarray, b: np.ndarray, k: int) -> Agreement:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    n = int(both.sum())
    rho = low = high = math.nan
    if n >= 3:
        ra, rb = ranks(a[both]), ranks(b[both])
        if ra.std() > 0 and rb.std() > 0:
            rho = float(np.corrcoef(ra, rb)[0, 1])
    if n > 3 and math.isfinite(rho):
        z, half = math.atanh(max(-0.999999, min(0.999999, rho))), Z95 * math.sqrt(1.06 / (n - 3))
        low, high = math.tanh(z - half), math.tanh(z + half)
    top_a, top_b = _top(a, k), _top(b, k)
    k = min(len(top_a), len(top_b))
    overlap = len(np.intersect1d(top_a[:k], top_b[:k]))
    pool = max(int(np.isfinite(a).sum()), int(np.isfinite(b).sum()), 1)
    return Agreement(n, rho, low, high, k, overlap, k * k / pool)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """The `k` best finite scores' records, highest first, ties by position (as select)."""
    candidates = np.flatnonzero(np.isfinite(scores))
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order][:k]


def wilson(hits: int, n: int) -> tuple[float, float, float]:
    """A share and its 95% Wilson score interval (NaN if n is 0)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = hits / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


_NUMBERS = re.compile(r"\d+")


def reason_groups(reasons: Iterable[tuple[int, str]], limit: int = 12
                  ) -> list[tuple[str, int, int]]:
    """Unscorable reasons grouped with their numbers (record, line, byte) blanked out: (the
    reason of the group's first record, how many, that record), most frequent first."""
    counts: Counter[str] = Counter()
    first: dict[str, tuple[int, str]] = {}
    for index, reason in reasons:
        key = _NUMBERS.sub("N", reason)[:160]
        counts[key] += 1
        first.setdefault(key, (index, reason))
    return [(first[key][1], count, first[key][0]) for key, count in counts.most_common(limit)]
