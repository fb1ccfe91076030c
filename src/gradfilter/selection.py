"""Selection: a pure function from scores to the chosen indices (method.md §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arguments import real_number, whole_number
from .errors import GradfilterError


@dataclass(frozen=True)
class Selection:
    ranked: np.ndarray  # every record with a finite score, highest first (ties: position)
    requested: int
    n_records: int
    n_nonfinite: int
    # The selected records where they are not the top `requested` of `ranked` (a --threshold
    # cut, a stratified choice), highest score first; None: plain top-k.
    chosen: np.ndarray | None = None

    @property
    def indices(self) -> np.ndarray:
        """The selected records, highest score first."""
        return self.ranked[:self.requested] if self.chosen is None else self.chosen

    def best(self, k: int) -> np.ndarray:
        return self.ranked[:k] if self.chosen is None else self.chosen[:k]

    def worst(self, k: int) -> np.ndarray:
        return self.ranked[::-1][:k]

    def in_order(self, order: str) -> np.ndarray:
        if order == "score":
            return self.indices
        if order == "input":
            return np.sort(self.indices)
        raise GradfilterError(f"--order must be 'input' or 'score', got {order!r}")


def budget(n_records: int, ratio: float | None, count: int | None) -> int:
    """How many to keep: `count`, or `ratio` of all records rounded half up."""
    if (ratio is None) == (count is None):
        raise GradfilterError("give exactly one of --ratio and --count")
    if count is not None:
        count = whole_number(count, "--count")
        if count < 0:
            raise GradfilterError("--count must not be negative")
        return count
    assert ratio is not None
    ratio = real_number(ratio, "--ratio")
    if not 0 < ratio <= 1:
        raise GradfilterError(f"--ratio must be in (0, 1], got {ratio}")
    return math.floor(ratio * n_records + 0.5)


def select_top(
    scores: np.ndarray, ratio: float | None = None, count: int | None = None,
    threshold: float | None = None,
) -> Selection:
    """Highest scores first, ties broken by position; non-finite scores are never selected.

    With `threshold`, only records scoring at or above it: all of them, or (with `ratio` or
    `count`) the top of them up to that budget.
    """
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    candidates = np.flatnonzero(finite)
    order = np.lexsort((candidates, -scores[candidates]))  # primary: score desc; then position
    ranked = candidates[order]
    if threshold is None:
        wanted = budget(len(scores), ratio, count)
        return Selection(ranked, wanted, len(scores), int((~finite).sum()))
    check_threshold(threshold)
    above = int(np.count_nonzero(scores[ranked] >= threshold))  # a prefix: ranked is sorted
    wanted = above if ratio is None and count is None else budget(len(scores), ratio, count)
    return Selection(ranked, wanted, len(scores), int((~finite).sum()),
                     chosen=ranked[:min(wanted, above)])


def check_threshold(threshold: float) -> None:
    if not math.isfinite(threshold):
        raise GradfilterError(f"--threshold must be a finite number, got {threshold}")


def cut_score(scores: np.ndarray, chosen: np.ndarray) -> float | None:
    """The lowest score kept (None if nothing was): reused as --threshold on the same scores,
    it keeps a top-k subset again (with any record tied with the last one)."""
    return float(np.min(scores[chosen])) if len(chosen) else None
