"""Alignment with target examples (method.md §4, `align*`; §6, `rds`): no torch here.

The target examples' LoRA gradients are sketched by the same seeded projection as the pool's
(scoring/sketch.py), per member and collected epoch. The target direction of member m at
epoch e is the mean of the target examples' sketches: the sketch of the gradient of the mean
target loss (the projection is linear), the direction whose first-order step lowers the
target's loss. A pool record's alignment is the cosine of its sketch with that direction; its
LESS-style reading (max over target examples) the largest cosine with any one target
example's sketch. Both are 0 where either vector is zero, NaN where the record is unscored.
"""

from __future__ import annotations

import numpy as np

ALIGN_STATS = ("align", "alignmax")  # table columns align_e{e}_m{m}, alignmax_e{e}_m{m}
_CHUNK = 4096  # pool records at a time


def _units(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float64); zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def target_direction(target_sketches: np.ndarray) -> np.ndarray:
    """[members, dim]: the mean over target examples of [targets, members, dim] sketches."""
    return np.asarray(target_sketches, dtype=np.float64).mean(axis=0)


def alignments(pool: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For [records, members, dim] pool sketches and [targets, members, dim] target sketches:
    ([records, members] cosine with the target direction, [records, members] largest cosine
    with one target example)."""
    direction = _units(target_direction(targets))  # [members, dim]
    target_units = _units(targets)
    mean = np.empty(pool.shape[:2])
    largest = np.empty(pool.shape[:2])
    for start in range(0, len(pool), _CHUNK):  # [chunk, targets] at a time, per member
        units = _units(pool[start:start + _CHUNK])
        mean[start:start + _CHUNK] = np.einsum("rmd,md->rm", units, direction)
        for m in range(pool.shape[1]):
            largest[start:start + _CHUNK, m] = (units[:, m] @ target_units[:, m].T).max(axis=1)
    return mean, largest


# --- RDS+: cosines of pooled hidden states (scoring/representations.py), no gradients --------

RDS_COLUMNS = ("rds", "rds_mean")


def round_robin_slots(cosines: np.ndarray) -> np.ndarray:
    """Each record's slot in RDS+'s round robin over [records, targets] cosines: round r takes,
    for each target example t in turn, the record t ranks r-th (highest cosine first, ties by
    position), unless it was taken already. A record is taken at the first (round, target) that
    reaches it: round r = its best rank under any target, t the first target ranking it so;
    its slot is r * targets + t. The first k records by slot are the round robin's k."""
    n, count = cosines.shape
    best = np.full(n, n, dtype=np.int64)
    first = np.zeros(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    for t in range(count):
        rank[np.argsort(-cosines[:, t], kind="stable")] = np.arange(n)
        better = rank < best
        best[better] = rank[better]
        first[better] = t
    return best * count + first


def rds_scores(cosines: np.ndarray) -> dict[str, np.ndarray]:
    """From [records, targets] cosines: `rds`, minus each record's round-robin slot (so that
    higher is kept first, 0 the first record taken), and `rds_mean`, its mean cosine over the
    target examples."""
    cosines = np.asarray(cosines, dtype=np.float64)
    if not cosines.shape[1]:
        raise ValueError("RDS+ needs at least one target example")
    return {"rds": (-round_robin_slots(cosines)).astype(np.float64),
            "rds_mean": cosines.mean(axis=1)}
