"""Pairwise statistics shared by the judge and the human benchmarks (evaluation.md §3).

An annotator (an LLM judge, a person, or the majority of several people) gives model A's
outcome against model B on each prompt: win, tie or lose. From those outcomes: the counts, the
winning score (wins - losses) / all + 1 with its 95% bootstrap interval over prompts, the
majority vote of several raters, and agreement: Cohen's kappa between two annotators (with the
confusion table), Fleiss' kappa between several, the share of unanimous items.

Pure numpy: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .intervals import Interval, bootstrap

Outcome = Literal["win", "tie", "lose", "unparsed", "unrated"]
OUTCOMES: tuple[str, str, str] = ("win", "tie", "lose")  # the outcomes that are scored
_VALUE = {"win": 1.0, "tie": 0.0, "lose": -1.0}
_FLIPPED = {"win": "lose", "lose": "win"}


def winning_score(wins: int, ties: int, losses: int) -> float:
    """(wins - losses) / all + 1: 2 = A always wins, 1 = even, 0 = A always loses."""
    total = wins + ties + losses
    return (wins - losses) / total + 1 if total else math.nan


def reading(score: dict[str, Any], a: object, b: object) -> str:
    """The verdict of a winning score's interval (evaluation.md §0): `a` better only where the
    interval lies above 1 (even), `b` better only where below, else tied (also where there is
    no interval: nothing was scored)."""
    low, high = score.get("low"), score.get("high")
    if isinstance(low, int | float) and math.isfinite(low) and low > 1:
        return f"{a} better"
    if isinstance(high, int | float) and math.isfinite(high) and high < 1:
        return f"{b} better"
    return "tied"


def summarize(outcomes: Sequence[str], seed: int = 0, *,
              missing: str = "unparsed") -> dict[str, Any]:
    """Counts and the winning score with its 95% bootstrap interval over the scored prompts.

    Outcomes other than win / tie / lose (a judge reply never parsed, an item a person left
    unrated) are counted under `missing` and left out of the score.
    """
    counts = {k: sum(o == k for o in outcomes) for k in OUTCOMES}
    values = np.array([_VALUE[o] for o in outcomes if o in _VALUE])
    if len(values):
        interval = bootstrap(lambda idx: float(values[idx].mean()) + 1, [len(values)], seed=seed)
    else:
        interval = Interval(math.nan, math.nan, math.nan)
    return {"wins": counts["win"], "ties": counts["tie"], "losses": counts["lose"],
            missing: len(outcomes) - len(values), "judged": len(values),
            "winning_score": interval.as_dict()}


def flipped(outcome: str) -> str:
    """B's outcome against A from A's against B (a tie or a missing outcome stays)."""
    return _FLIPPED.get(outcome, outcome)


def majority(votes: Sequence[str], missing: str = "unrated") -> str:
    """The outcome more than half of the given votes chose; `tie` where none did (the raters
    disagree, so the item is even); `missing` where no vote was given. For three raters this is
    Cherry LLM's majority vote, and the median of the votes."""
    given = [v for v in votes if v in _VALUE]
    if not given:
        return missing
    for outcome in OUTCOMES:
        if 2 * given.count(outcome) > len(given):
            return outcome
    return "tie"


def confusion(first: Sequence[str], second: Sequence[str]) -> list[list[int]]:
    """Counts of (first's outcome, second's outcome), rows and columns in OUTCOMES order,
    over the items both scored."""
    table = [[0] * len(OUTCOMES) for _ in OUTCOMES]
    for x, y in zip(first, second, strict=True):
        if x in _VALUE and y in _VALUE:
            table[OUTCOMES.index(x)][OUTCOMES.index(y)] += 1
    return table


def cohen_kappa(table: np.ndarray) -> float:
    """Cohen's kappa from a square confusion table: (observed - chance agreement) /
    (1 - chance); NaN where chance agreement is 1 (both always gave one same outcome)."""
    table = np.asarray(table, dtype=np.float64)
    total = table.sum()
    if total == 0:
        return math.nan
    observed = np.trace(table) / total
    chance = float((table.sum(axis=1) / total) @ (table.sum(axis=0) / total))
    return (observed - chance) / (1 - chance) if chance < 1 else math.nan


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from an [items, categories] table of how many raters chose each
    category (every item rated by the same number of raters, at least two); NaN where chance
    agreement is 1."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0:
        return math.nan
    raters = counts.sum(axis=1)
    if raters[0] < 2 or not np.all(raters == raters[0]):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of raters on every item")
    n = raters[0]
    agreement = float(((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean())
    shares = counts.sum(axis=0) / counts.sum()
    chance = float((shares ** 2).sum())
    return (agreement - chance) / (1 - chance) if chance < 1 else math.nan


def vote_counts(ratings: Sequence[Sequence[str]]) -> np.ndarray:
    """[items, 3] counts of win / tie / lose votes, one row per item's ratings."""
    return np.array([[row.count(o) for o in OUTCOMES] for row in ratings], dtype=np.int64)


def rater_agreement(ratings: Sequence[Sequence[str]], seed: int = 0) -> dict[str, Any]:
    """Agreement between raters over the items every one of them rated: Fleiss' kappa with a
    95% bootstrap interval over items, and the share of unanimous items."""
    complete = [row for row in ratings if row and all(v in _VALUE for v in row)]
    counts = vote_counts(complete)
    if len(complete) == 0 or len(complete[0]) < 2:
        nan = Interval(math.nan, math.nan, math.nan)
        return {"items": len(complete), "fleiss_kappa": nan.as_dict(), "unanimous": math.nan}
    kappa = bootstrap(lambda idx: fleiss_kappa(counts[idx]), [len(counts)], seed=seed)
    unanimous = float((counts.max(axis=1) == counts.sum(axis=1)).mean())
    return {"items": len(complete), "fleiss_kappa": kappa.as_dict(), "unanimous": unanimous}


def annotator_agreement(first: Sequence[str], second: Sequence[str],
                        seed: int = 0) -> dict[str, Any]:
    """Agreement of two annotators (a person or the majority, and the judge) over the items
    both scored: Cohen's kappa with a 95% bootstrap interval over items, the share of equal
    outcomes, and the confusion table (rows: first, columns: second, in OUTCOMES order)."""
    pairs = [(x, y) for x, y in zip(first, second, strict=True) if x in _VALUE and y in _VALUE]
    xs = np.array([OUTCOMES.index(x) for x, _ in pairs], dtype=np.int64)
    ys = np.array([OUTCOMES.index(y) for _, y in pairs], dtype=np.int64)

    def kappa(idx: np.ndarray) -> float:
        table = np.zeros((len(OUTCOMES), len(OUTCOMES)))
        np.add.at(table, (xs[idx], ys[idx]), 1)
        return cohen_kappa(table)

    if pairs:
        interval = bootstrap(kappa, [len(pairs)], seed=seed)
        equal = float((xs == ys).mean())
    else:
        interval, equal = Interval(math.nan, math.nan, math.nan), math.nan
    return {"items": len(pairs), "cohen_kappa": interval.as_dict(), "equal": equal,
            "confusion": confusion([x for x, _ in pairs], [y for _, y in pairs])}


def finite(obj: Any) -> Any:
    """NaN (a test set with nothing scored) becomes null: JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
