"""Selection: a pure function from scores to the chosen indices (method.md §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import GradfilterError


@dataclass(frozen=True)
class Selection:
    ranked: np.ndarray  # every record with a finite score, highest first (ties: position)
    requested: int
    n_records: int
    n_nonfinite: int

    @property
    def indices(self) -> np.ndarray:
        """The selected records, highest score first."""
        return self.ranked[:self.requested]

    def best(self, k: int) -> np.ndarray:
        return self.ranked[:k]

    def worst(self, k: int) -> np.ndarray:
        return self.ranked[::-1][:k]

    def in_order(self, order: str) -> np.ndarray:
        if order == "score":
            return self.indices
        if order == "input":
            return np.sort(self.indices)
        raise GradfilterError(f"--order must be 'input' or 'score', got {order!r}")


def budget(n_records: int, ratio: float | None, count: int | None,
           threshold: float | None = None, scores: np.ndarray | None = None) -> int:
    """How many to keep: `count`, or `ratio` of all records rounded half up, or as many as
    score at least `threshold` (a cut that means the same across shards and runs)."""
    if sum(x is not None for x in (ratio, count, threshold)) != 1:
        raise GradfilterError("give exactly one of --ratio, --count and --threshold")
    if threshold is not None:
        if not math.isfinite(threshold):
            raise GradfilterError(f"--threshold must be a finite number, got {threshold}")
        assert scores is not None
        return int((np.isfinite(scores) & (scores >= threshold)).sum())
    if count is not None:
        if count < 0:
            raise GradfilterError("--count must not be negative")
        return count
    assert ratio is not None
    if not 0 < ratio <= 1:
        raise GradfilterError(f"--ratio must be in (0, 1], got {ratio}")
    return math.floor(ratio * n_records + 0.5)


def select_top(
    scores: np.ndarray, ratio: float | None = None, count: int | None = None,
    threshold: float | None = None,
) -> Selection:
    """Highest scores first, ties broken by position; non-finite scores are never selected.
    With `threshold`, every record scoring at least it (in the utility's own direction: a
    lowest-first utility's scores are negated, as the table's `load_scores` gives them)."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    wanted = budget(len(scores), ratio, count, threshold, scores)
    candidates = np.flatnonzero(finite)
    order = np.lexsort((candidates, -scores[candidates]))  # primary: score desc; then position
    return Selection(candidates[order], wanted, len(scores), int((~finite).sum()))
