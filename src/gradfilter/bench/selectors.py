"""The named selectors the benchmarks compare beside the rankings (issue 34): each keeps a subset
at a budget, it does not rank the pool, so a benchmark measures what it keeps (contamination,
a fine-tune on it), never an AUROC.

- `coverage`: k-means over the G-SNR table's training trajectories, the budget spread evenly
  over the clusters, the highest G-SNR within each (`strata.coverage`).
- `s2l`: the same clusters and spread, a seeded uniform draw within each (S2L, arXiv
  2403.07384; `strata.s2l`).
- `balanced_random`: a seeded uniform draw within each value of a source field of the records
  (`--balance-field`, `source` unless named), the budget spread evenly over the values.

Each is run on the records the benchmark may select (its `rows`): the clusters are made over
those records only, and the budget is a share of them, rounded half up as `select --ratio`.
No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import GradfilterError
from ..selection import budget
from ..strata import coverage, s2l, stratified_choice, value_labels

SELECTORS = ("coverage", "s2l", "balanced_random")
CLUSTERED = ("coverage", "s2l")  # the selectors that read a G-SNR table's trajectories
DEFAULT_BALANCE_FIELD = "source"
WHAT = {
    "coverage": "cluster-balanced (k-means over the trajectories), highest G-SNR in each cluster",
    "s2l": "cluster-balanced (S2L), a seeded uniform draw in each cluster",
    "balanced_random": "a seeded uniform draw in each value of a source field",
}


def is_selector(method: str) -> bool:
    return method in SELECTORS


@dataclass(frozen=True)
class SelectorInputs:
    """What the selectors read: a G-SNR table with trajectories (coverage, s2l), one row a
    record, and the records' values of the balance field (balanced_random)."""

    table: str | Path | pa.Table | None = None
    values: Sequence[object] | None = None
    field: str = DEFAULT_BALANCE_FIELD
    seed: int = 0


def selector_subsets(method: str, inputs: SelectorInputs, rows: np.ndarray,
                     budgets: Sequence[float]) -> dict[str, np.ndarray]:
    """`f"{budget:g}"` -> the positions within `rows` (sorted) that `method` keeps when it
    selects among the records `rows` at that budget."""
    rows = np.asarray(rows, dtype=np.int64)
    if method in CLUSTERED:
        if inputs.table is None:
            raise GradfilterError(f"{method} needs a G-SNR table of the pool (its training "
                                  "trajectories); none is among the tables")
        table = _as_table(inputs.table)
        if table.num_rows <= int(rows.max(initial=-1)):
            raise GradfilterError(f"{method}: the G-SNR table has {table.num_rows} rows, fewer "
                                  "than the pool's records")
        part = table.take(pa.array(rows))
        select = coverage if method == "coverage" else s2l
        return {f"{b:g}": select(part, ratio=b, seed=inputs.seed) for b in budgets}
    if method == "balanced_random":
        labels = balance_labels(inputs, rows)
        return {f"{b:g}": np.sort(stratified_choice(
            np.zeros(len(rows)), labels, budget(len(rows), b, None), allocation="even",
            within="random", seed=inputs.seed).chosen) for b in budgets}
    raise GradfilterError(f"unknown selector {method!r}; the selectors are {list(SELECTORS)}")


def balance_labels(inputs: SelectorInputs, rows: np.ndarray) -> np.ndarray:
    """Each of `rows`' stratum by its value of the balance field; a one-line error where no
    record has the field, or where its values read as an ID (more than half the records have
    a value of their own)."""
    field = inputs.field
    if inputs.values is None:
        raise GradfilterError(f"balanced_random needs the records' {field!r} field")
    values = [inputs.values[int(i)] for i in rows]
    if all(v is None for v in values):
        raise GradfilterError(f"balanced_random: no record has a field {field!r} (name the "
                              "source field with --balance-field)")
    labels, strata = value_labels(values, "the pool", field)
    if len(strata) > max(2, len(values) // 2):
        raise GradfilterError(f"balanced_random: field {field!r} has {len(strata)} distinct "
                              f"values among {len(values)} records, an ID rather than a "
                              "source; name a field with a few values with --balance-field")
    return labels


def _as_table(table: str | Path | pa.Table) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    from ..table import load_stats

    return load_stats(table)
