"""Utilities of method.md §4: cheap pure functions over the statistics table.

    G_i^(e) = mean_m n_i^(m,e)                      ensemble gradient magnitude
    D_i     = (G_i^(s) - G_i^(t)) / (G_i^(s) + eps)  relative drop
    V_i     = var_m n_i^(m,t)                        late-stage variance (population, ddof=0)

Where every member's late norm is zero, V_i / G_i^(t)^2 is taken as 0 (it is 0/0 otherwise).
Unscored examples (NaN statistics) get NaN utilities and are never selected.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa

from .errors import GradfilterError

EPS = 1e-12
UTILITIES = ("gsnr", "gsnr-cv", "drop", "gradnorm", "uncertainty")
BASELINE_SCORES = ("ifd", "perplexity", "length", "random")  # columns of baseline tables
_SQNORM = re.compile(r"^sqnorm_e(\d+)_m(\d+)$")


def column_name(utility: str) -> str:
    """`gsnr-cv` is stored as column `gsnr_cv`."""
    return utility.replace("-", "_")


def table_epochs(table: pa.Table) -> tuple[int, int]:
    """(early, late) from the table's metadata, else the smallest and largest epoch present."""
    info = table_meta(table)
    if "early" in info:
        return int(info["early"]), int(info["late"])
    epochs = sorted({int(m.group(1)) for c in table.column_names if (m := _SQNORM.match(c))})
    if len(epochs) < 2:
        raise GradfilterError("the statistics table needs sqnorm columns for two epochs")
    return epochs[0], epochs[-1]


def sqnorm_columns(names: list[str], epoch: int) -> list[str]:
    """`sqnorm_e{epoch}_m{m}` of every member m present, in member order."""
    members = sorted(int(m.group(2)) for c in names
                     if (m := _SQNORM.match(c)) and int(m.group(1)) == epoch)
    if not members:
        raise GradfilterError(f"the statistics table has no sqnorm columns for epoch {epoch}")
    return [f"sqnorm_e{epoch}_m{m}" for m in members]


def sqnorm_matrix(table: pa.Table, epoch: int) -> np.ndarray:
    """[examples, members] squared gradient norms at one epoch."""
    return np.stack(
        [table.column(name).to_numpy(zero_copy_only=False)
         for name in sqnorm_columns(table.column_names, epoch)],
        axis=1,
    ).astype(np.float64)


def compute_utilities(
    early: np.ndarray, late: np.ndarray, eps: float = EPS
) -> dict[str, np.ndarray]:
    """All utilities from [examples, members] squared norms at epochs s and t."""
    magnitude_early = early.mean(axis=1)
    magnitude_late = late.mean(axis=1)
    drop = (magnitude_early - magnitude_late) / (magnitude_early + eps)
    variance = late.var(axis=1)
    # All member norms zero means zero variance too: define V/G^2 = 0 there, not 0/0.
    zero = magnitude_late == 0
    relative_variance = np.where(zero, 0.0, variance / np.where(zero, 1.0, magnitude_late) ** 2)
    return {
        "gsnr": drop / (variance + eps),
        "gsnr-cv": drop / (relative_variance + eps),
        "drop": drop,
        "gradnorm": magnitude_late,
        "uncertainty": variance,
    }


def with_utilities(table: pa.Table) -> pa.Table:
    """The table with one column per utility, replacing any that are there."""
    early, late = table_epochs(table)
    values = compute_utilities(sqnorm_matrix(table, early), sqnorm_matrix(table, late))
    for utility in UTILITIES:
        name = column_name(utility)
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(values[utility]))
    return table


def table_meta(table: pa.Table) -> dict:
    meta = (table.schema.metadata or {}).get(b"gradfilter")
    return json.loads(meta) if meta else {}


def default_utility(table: pa.Table) -> str:
    """What `select` ranks by unless told: G-SNR, or the baseline the table was made by."""
    return table_meta(table).get("utility", "gsnr")


def available_utilities(table: pa.Table) -> list[str]:
    names = set(table.column_names)
    baseline = [u for u in BASELINE_SCORES if u in names]
    if any(_SQNORM.match(c) for c in names):
        return [*UTILITIES, *baseline]
    return baseline + [u for u in UTILITIES if column_name(u) in names]


def require_utility(table: pa.Table, utility: str) -> None:
    """A clear error unless `table` (its columns are enough) can give `utility`."""
    offered = available_utilities(table)
    if not offered:
        raise GradfilterError("the statistics table holds no scores: neither sqnorm columns "
                              "nor a baseline's score column")
    if utility not in offered:
        raise GradfilterError(f"the statistics table has no utility {utility!r}; it offers "
                              f"{offered}")


def utility_scores(table: pa.Table, utility: str) -> np.ndarray:
    """Scores for one utility: the stored column, else computed from the raw statistics."""
    require_utility(table, utility)
    name = column_name(utility)
    if name not in table.column_names:
        table = with_utilities(table)
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
