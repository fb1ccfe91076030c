"""Stratified selection: the budget spread over strata of the pool, then the best records (or a
seeded random draw) within each stratum. Pure functions of the scores and the table (and, for a
field, of the records' values); no torch here.

Strata (`--stratify`):
- `FIELD` (or `field:FIELD`): the value of a top-level field of each record (`source`,
  `language`, ...); a record without it (or with null) is a stratum of its own.
- `length[:B]`: B bins (default 4) of the response's length in the tokens that carry loss (the
  table's `n_response_tokens`), cut at the pool's quantiles j/B (j = 1..B-1; where one falls
  between two records, the upper one's length); a record on an edge goes to the upper bin,
  equal edges merge, empty bins are dropped.
- `clusters[:K]`: k-means over the records' training trajectories (`clusters`).

The pool is the records with a finite score by the ranking utility (the only ones `select`
ever keeps); a stratum's size n_s counts its pool records, its capacity c_s those of them at or
above `--threshold` (n_s without one). The budget B is spread by (`--allocate`)

    x_s = min(c_s, lambda * w_s),  lambda such that sum_s x_s = B  (every c_s if sum c_s <= B)

with `even`: w_s = 1 (S2L's rule: strata smaller than their share are taken whole and the rest
shared evenly among the others, repeated until none is), or `proportional`: w_s = n_s (the
pool's shares). Whole numbers: floor(x_s), and the units left go one each to the largest
fractional parts (ties: the larger w_s, then the larger c_s, then the lower stratum number).
Within a stratum (`--within`): `utility`, highest score first (ties by position), or `random`,
a uniform draw seeded by `(seed, WITHIN_STREAM)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa

from .clusters import DEFAULT_FEATURES, ClusterFeatures, cluster_records
from .data.readers import Record
from .errors import GradfilterError
from .seeds import WITHIN_STREAM, derived_seed
from .selection import Selection, budget, check_threshold, select_top
from .table import (
    load_columns,
    load_scores,
    load_stats,
    table_column_names,
    table_rows,
    table_utility,
)

Allocation = Literal["even", "proportional"]
Within = Literal["utility", "random"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)
WITHIN: tuple[str, ...] = get_args(Within)
DEFAULT_BINS = 4
MAX_STRATA = 10_000  # distinct values of a field: more is an ID, not a stratum
RESPONSE_TOKENS = "n_response_tokens"


@dataclass(frozen=True)
class Stratify:
    """What `--stratify` names: a field's values, response-length bins, or clusters."""

    by: Literal["field", "length", "clusters"]
    field: str | None = None
    bins: int = DEFAULT_BINS
    k: int | None = None  # None: the rule of `clusters.default_k`

    @property
    def default_allocation(self) -> Allocation:
        return "even" if self.by == "clusters" else "proportional"


def parse_stratify(text: str) -> Stratify:
    """`FIELD`, `field:FIELD`, `length[:B]` or `clusters[:K]`."""
    head, sep, tail = text.partition(":")
    if head == "field" and sep:
        if not tail:
            raise GradfilterError("--stratify field:FIELD needs a field name")
        return Stratify("field", field=tail)
    if head in ("length", "clusters"):
        if not sep:
            return Stratify(head)
        number = _positive(tail, f"--stratify {head}:{'B' if head == 'length' else 'K'}")
        if head == "length":
            if number < 2:
                raise GradfilterError(f"--stratify length:B needs at least 2 bins, got {tail}")
            return Stratify("length", bins=number)
        return Stratify("clusters", k=number)
    if not text.strip():
        raise GradfilterError("--stratify needs FIELD, field:FIELD, length[:B] or clusters[:K]")
    return Stratify("field", field=text)


def _positive(text: str, what: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise GradfilterError(f"{what} needs a positive whole number, got {text!r}")
    return number


def check_options(stratify: str | None, allocate: str | None, within: str | None,
                  cluster_features: str | None, threshold: float | None = None,
                  diversity: str = "none") -> Stratify | None:
    """The `--stratify` spec, after a one-line error for any option that does not fit: run
    before anything is read or scored, so a refusal leaves nothing behind."""
    if threshold is not None:
        check_threshold(threshold)
    if diversity != "none" and (stratify is not None or threshold is not None):
        raise GradfilterError("--diversity dedup cannot be combined with --stratify or "
                              "--threshold")
    if stratify is None:
        for option, value in (("--allocate", allocate), ("--within", within),
                              ("--cluster-features", cluster_features)):
            if value is not None:
                raise GradfilterError(f"{option} needs --stratify")
        return None
    spec = parse_stratify(stratify)
    if allocate is not None and allocate not in ALLOCATIONS:
        raise GradfilterError(f"--allocate must be one of {list(ALLOCATIONS)}, got {allocate!r}")
    if within is not None and within not in WITHIN:
        raise GradfilterError(f"--within must be one of {list(WITHIN)}, got {within!r}")
    if cluster_features is not None and spec.by != "clusters":
        raise GradfilterError("--cluster-features needs --stratify clusters")
    return spec


def refuse_before_scoring(spec: Stratify | None, method: str, records: Sequence[Record],
                          where: str) -> None:
    """What `run` can refuse before it scores (so that nothing is written): clusters from a
    baseline's table (it has no trajectories), more clusters than records, a field no record
    has."""
    if spec is None:
        return
    if spec.by == "clusters" and method != "gsnr":
        raise GradfilterError(f"--stratify clusters needs the training trajectories of "
                              f"--method gsnr; --method {method} records none")
    if spec.by == "clusters" and spec.k is not None and spec.k > len(records):
        raise GradfilterError(f"--stratify clusters:{spec.k} asks for {spec.k} clusters but "
                              f"{where} has only {len(records)} records")
    if spec.by == "field":
        assert spec.field is not None
        field_labels(records, spec.field, len(records), where)


# --- allocation ------------------------------------------------------------------------------

def allocate(weights: np.ndarray, capacities: np.ndarray, total: int) -> np.ndarray:
    """Whole numbers x_s <= capacities summing to min(total, sum of capacities), spread as the
    module docstring says: x_s = min(c_s, lambda * w_s), then largest remainders."""
    weights = np.asarray(weights, dtype=np.float64)
    capacities = np.asarray(capacities, dtype=np.int64)
    if total >= capacities.sum():
        return capacities.copy()
    shares = np.zeros(len(capacities))
    active = (capacities > 0) & (weights > 0)
    remaining = float(total)
    while active.any():
        level = remaining / weights[active].sum()
        whole = active & (capacities <= level * weights)  # smaller than their share
        if not whole.any():
            shares[active] = level * weights[active]
            break
        shares[whole] = capacities[whole]
        remaining -= float(capacities[whole].sum())
        active &= ~whole
    counts = np.minimum(np.floor(shares + 1e-9).astype(np.int64), capacities)
    left = total - int(counts.sum())
    order = np.lexsort((np.arange(len(counts)), -capacities, -weights, -(shares - counts)))
    room = order[counts[order] < capacities[order]]
    counts[room[:left]] += 1
    return counts


@dataclass(frozen=True)
class StrataChoice:
    """What a stratified selection took: the chosen records and each stratum's numbers."""

    chosen: np.ndarray  # highest score first (ties: position)
    sizes: np.ndarray  # n_s: pool records per stratum
    capacities: np.ndarray  # c_s: pool records at or above the threshold
    taken: np.ndarray  # x_s


def stratified_choice(scores: np.ndarray, labels: np.ndarray, total: int, *,
                      allocation: Allocation, within: Within, seed: int = 0,
                      threshold: float | None = None,
                      n_strata: int | None = None) -> StrataChoice:
    """`total` records spread over the strata `labels` (-1: none; `n_strata` of them, by
    default one more than the largest label) by `allocation`, the best by `scores` (or a
    seeded random draw) within each; records without a finite score or a stratum, or below
    `threshold`, are never chosen."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if allocation not in ALLOCATIONS:
        raise GradfilterError(f"--allocate must be one of {list(ALLOCATIONS)}, got "
                              f"{allocation!r}")
    if n_strata is None:
        n_strata = int(labels.max()) + 1 if len(labels) else 0
    pool = np.isfinite(scores) & (labels >= 0)
    eligible = pool if threshold is None else pool & (scores >= threshold)
    sizes = np.bincount(labels[pool], minlength=n_strata)
    capacities = np.bincount(labels[eligible], minlength=n_strata)
    weights = np.ones(n_strata) if allocation == "even" else sizes
    taken = allocate(weights, capacities, total)
    candidates = np.flatnonzero(eligible)
    if within == "utility":
        order = candidates[np.lexsort((candidates, -scores[candidates]))]
    elif within == "random":
        order = np.random.default_rng(derived_seed(seed, WITHIN_STREAM)).permutation(candidates)
    else:
        raise GradfilterError(f"--within must be one of {list(WITHIN)}, got {within!r}")
    chosen = order[_rank_in_stratum(labels[order], n_strata) < taken[labels[order]]]
    chosen = chosen[np.lexsort((chosen, -scores[chosen]))]
    return StrataChoice(chosen, sizes, capacities, taken)


def _rank_in_stratum(labels: np.ndarray, n_strata: int) -> np.ndarray:
    """Each position's rank among the earlier positions of its own stratum (0 for the first)."""
    by_stratum = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[by_stratum], np.arange(n_strata))
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_stratum] = np.arange(len(labels)) - starts[labels[by_stratum]]
    return rank


# --- strata ----------------------------------------------------------------------------------

def value_labels(values: Iterable[object], where: str = "the data",
                 field: str = "the field") -> tuple[np.ndarray, list]:
    """Each value's stratum number (in order of first appearance) and the strata's values;
    None (a record without the field) is a stratum like any other value."""
    _, codes, shown = _coded(enumerate(values), where, field)
    return codes, shown


def _coded(pairs: Iterable[tuple[int, object]], where: str,
           field: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(record positions, their stratum numbers, the strata's values) of (position, value)
    pairs; a one-line error for a value that cannot be a stratum, or too many values."""
    codes: dict[str, int] = {}
    shown: list = []
    positions, labels = [], []
    for index, value in pairs:
        if isinstance(value, dict | list):
            raise GradfilterError(
                f"{where}: record {index}: field {field!r} holds a {type(value).__name__}; "
                "--stratify needs a string, number or boolean")
        key = json.dumps(value, sort_keys=True)
        if key not in codes:
            if len(codes) >= MAX_STRATA:
                raise GradfilterError(
                    f"{where}: field {field!r} has more than {MAX_STRATA} distinct values "
                    f"(an ID?); --stratify needs a field with a few values")
            codes[key] = len(codes)
            shown.append(value)
        positions.append(index)
        labels.append(codes[key])
    return (np.asarray(positions, dtype=np.int64), np.asarray(labels, dtype=np.int32), shown)


def field_labels(records: Iterable[Record], field: str, n_records: int,
                 where: str) -> tuple[np.ndarray, list]:
    """Every record's stratum by its value of `field` (-1 for a place the reader could not
    read: it is unscored); a one-line error if no record has the field, or the records are more
    than the table's rows."""
    seen, first_keys = False, None

    def pairs():
        nonlocal seen, first_keys
        for record in records:
            if record.index >= n_records:
                raise _row_mismatch(n_records, where, record.index + 1)
            if record.error is not None:
                continue
            if first_keys is None:
                first_keys = list(record.data)
            seen = seen or field in record.data
            yield record.index, record.data.get(field)

    positions, codes, shown = _coded(pairs(), where, field)
    if not seen:
        keys = ", ".join(first_keys or []) or "none"
        raise GradfilterError(f"{where}: no record has a field {field!r} to stratify by "
                              f"(the first record's fields: {keys})")
    labels = np.full(n_records, -1, dtype=np.int32)
    labels[positions] = codes
    return labels, shown


def _row_mismatch(n_rows: int, where: str, n_records: int) -> GradfilterError:
    return GradfilterError(f"the statistics table has {n_rows} rows but {where} has more "
                           f"({n_records} at least); score this file first")


def length_labels(tokens: np.ndarray, pool: np.ndarray,
                  bins: int) -> tuple[np.ndarray, list[str], list[float]]:
    """Response-length bins (module docstring): labels, the bins' names, the inner edges."""
    tokens = np.asarray(tokens, dtype=np.float64)
    known = np.isfinite(tokens)
    inside = tokens[pool & known]
    if not len(inside):
        return np.full(len(tokens), -1, dtype=np.int32), [], []
    edges = np.unique(np.quantile(inside, np.arange(1, bins) / bins, method="higher"))
    raw = np.searchsorted(edges, tokens, side="right")
    present = np.unique(raw[pool & known])
    rename = np.full(len(edges) + 1, -1, dtype=np.int32)
    rename[present] = np.arange(len(present), dtype=np.int32)
    labels = np.where(known, rename[np.minimum(raw, len(edges))], -1).astype(np.int32)
    bounds = [-np.inf, *edges.tolist(), np.inf]
    names = [_bin_name(bounds[b], bounds[b + 1]) for b in present]
    return labels, names, edges.tolist()


def _bin_name(low: float, high: float) -> str:
    if np.isinf(low):
        return f"< {high:g} tokens"
    if np.isinf(high):
        return f">= {low:g} tokens"
    return f"[{low:g}, {high:g}) tokens"


# --- selection from a table --------------------------------------------------------------------

Stats = str | Path | pa.Table | np.ndarray
RecordSource = Callable[[], Iterable[Record]]


def choose(scores: np.ndarray, stats: Stats, *, ratio: float | None = None,
           count: int | None = None, threshold: float | None = None,
           stratify: str | None = None, allocate: Allocation | None = None,
           within: Within | None = None, cluster_features: ClusterFeatures | None = None,
           seed: int = 0, records: RecordSource | None = None,
           where: str = "the data") -> tuple[Selection, dict | None]:
    """The selection `select` writes: top-k (with `threshold`, among the records at or above
    it), or stratified by `stratify`; and what the stratification did (None without one).
    `records` gives the data's records again, for `--stratify FIELD`."""
    spec = check_options(stratify, allocate, within, cluster_features, threshold)
    if spec is None:
        return select_top(scores, ratio=ratio, count=count, threshold=threshold), None
    scores = np.asarray(scores, dtype=np.float64)
    ranked = select_top(scores, count=0)
    pool = np.isfinite(scores)
    if ratio is None and count is None and threshold is not None:
        total = int(np.count_nonzero(pool & (scores >= threshold)))
    else:
        total = budget(len(scores), ratio, count)
    labels, names, details = _strata(spec, scores, stats, total, records, where,
                                     cluster_features or DEFAULT_FEATURES, seed)
    allocation = allocate or spec.default_allocation
    picked = stratified_choice(scores, labels, total, allocation=allocation,
                               within=within or "utility", seed=seed, threshold=threshold,
                               n_strata=len(names))
    selection = Selection(ranked.ranked, total, len(scores), ranked.n_nonfinite,
                          chosen=picked.chosen)
    return selection, _report(spec, allocation, within or "utility", names, picked, details)


def _strata(spec: Stratify, scores: np.ndarray, stats: Stats, total: int,
            records: RecordSource | None, where: str, features: str,
            seed: int) -> tuple[np.ndarray, list, dict]:
    """Every record's stratum (-1: none), the strata's names, and how they were made."""
    n_records = len(scores)
    if spec.by == "field":
        if records is None:
            raise GradfilterError("--stratify FIELD needs the data's records")
        assert spec.field is not None
        labels, values = field_labels(records(), spec.field, n_records, where)
        return labels, values, {"field": spec.field}
    if isinstance(stats, np.ndarray):
        raise GradfilterError(f"--stratify {spec.by} needs a statistics table, not bare scores")
    if spec.by == "length":
        if RESPONSE_TOKENS not in table_column_names(stats):
            raise GradfilterError(f"--stratify length needs the table's {RESPONSE_TOKENS} "
                                  "column; this table has none")
        tokens = load_columns(stats, [RESPONSE_TOKENS])[:, 0]
        _check_length(tokens, n_records)
        labels, names, edges = length_labels(tokens, np.isfinite(scores), spec.bins)
        return labels, names, {"bins": spec.bins, "edges": edges}
    clustering = cluster_records(stats, k=spec.k, budget=total, features=features, seed=seed)
    _check_length(clustering.labels, n_records)
    return (clustering.labels, [f"cluster {c}" for c in range(clustering.k)],
            {**clustering.as_dict(), "seed": seed})


def _check_length(values: np.ndarray, n_records: int) -> None:
    if len(values) != n_records:
        raise GradfilterError(f"the statistics table has {len(values)} rows but {n_records} "
                              "scores were given")


def _report(spec: Stratify, allocation: str, within: str, names: list,
            picked: StrataChoice, details: dict) -> dict:
    """The run record's `stratify`: how the strata were made and what each gave."""
    whole = int(np.count_nonzero((picked.taken == picked.capacities) & (picked.capacities > 0)))
    return {
        "by": spec.by, **details, "allocation": allocation, "within": within,
        "strata": [{"stratum": name, "pool": int(n), "eligible": int(c), "taken": int(x)}
                   for name, n, c, x in zip(names, picked.sizes, picked.capacities,
                                            picked.taken, strict=True)],
        "taken_whole": whole,
    }


# --- named selectors (for the benchmarks) ------------------------------------------------------

def coverage(table: str | Path | pa.Table, *, ratio: float | None = None,
             count: int | None = None, k: int | None = None, utility: str | None = None,
             features: ClusterFeatures = DEFAULT_FEATURES, allocation: Allocation = "even",
             seed: int = 0) -> np.ndarray:
    """Cluster-balanced selection by the ranking utility (the table's default unless named):
    k-means over the training trajectories, the budget spread evenly over the clusters, the
    highest scores within each. The chosen records' positions, in input order."""
    scores = load_scores(table, utility or table_utility(table))
    selection, _ = choose(scores, table, ratio=ratio, count=count, stratify=_clusters(k),
                          allocate=allocation, within="utility", cluster_features=features,
                          seed=seed)
    return np.sort(selection.indices)


def s2l(table: str | Path | pa.Table, *, ratio: float | None = None, count: int | None = None,
        k: int | None = None, features: ClusterFeatures = DEFAULT_FEATURES,
        seed: int = 0) -> np.ndarray:
    """S2L (arXiv 2403.07384): the same clusters as `coverage`, the budget spread evenly, a
    seeded uniform draw within each cluster; every clustered (scored) record can be chosen.
    The chosen records' positions, in input order."""
    selection, _ = choose(np.zeros(table_rows(table)), table, ratio=ratio, count=count,
                          stratify=_clusters(k), allocate="even", within="random",
                          cluster_features=features, seed=seed)
    return np.sort(selection.indices)


def balanced_random(table: str | Path | pa.Table, values: Sequence[object], *,
                    ratio: float | None = None, count: int | None = None,
                    allocation: Allocation = "even", seed: int = 0) -> np.ndarray:
    """Random within each value of a source field (`values`, one per record, e.g. from
    `field_values`), the budget spread evenly over the values (`allocation="proportional"`:
    the pool's shares); records the table left unscored are never chosen. The chosen records'
    positions, in input order."""
    unscored = _unscored(table)
    if len(values) != len(unscored):
        raise GradfilterError(f"{len(values)} values for a table of {len(unscored)} records")
    labels, _ = value_labels(values)
    scores = np.where(unscored, np.nan, 0.0)
    total = budget(len(scores), ratio, count)
    picked = stratified_choice(scores, labels, total, allocation=allocation, within="random",
                               seed=seed)
    return np.sort(picked.chosen)


def field_values(records: Iterable[Record], field: str) -> list[object]:
    """Each record's value of a top-level `field` (None where it has none or was unreadable),
    for `balanced_random`."""
    return [None if r.error is not None else r.data.get(field) for r in records]


def _clusters(k: int | None) -> str:
    return "clusters" if k is None else f"clusters:{k}"


def _unscored(table: str | Path | pa.Table) -> np.ndarray:
    """Which records the table left unscored (a `skip_reason`), as booleans."""
    if "skip_reason" not in table_column_names(table):
        return np.zeros(table_rows(table), dtype=bool)
    column = (table if isinstance(table, pa.Table) else load_stats(table, ["skip_reason"])
              ).column("skip_reason")
    return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
