"""Clusters of records by their training trajectories under the ensemble (`--stratify clusters`).

S2L (Yang et al., arXiv 2403.07384) clusters each record's loss trajectory under a small proxy
and spreads the budget over the clusters; the statistics table already holds such a trajectory
for every member: the record's loss and squared gradient norm at each collected epoch.

Features of record i (documented in docs/method.md, "Selection"), by `features`:

- `trajectory` (default): `L^(m,e)` and `log n^(m,e)` for every member m and recorded epoch e
  (2 x M x E numbers: 16 at the defaults, M = 4 members, epochs s and t), each column
  standardised over the clustered records (mean 0, standard deviation 1; a
  constant column is left at 0). A zero norm is taken as the smallest positive norm of its
  column before the log.
- `loss`: the losses alone (S2L's own features), standardised the same way.
- `trajectory+sketch`: the trajectory block and a sketch block, each scaled to a total variance
  of 1 so that neither outweighs the other whatever its width: the late epoch's sketch
  features (the members' unit gradient sketches side by side, scaled by 1/sqrt(M): dot
  products are the mean over members of the cosine, as `--diversity` compares them) times a
  seeded Gaussian matrix [M x dim, 32] (Johnson-Lindenstrauss: distances kept up to a few
  tens of percent), centred.

Only records whose trajectory is finite (the scored ones) are clustered; the others get no
cluster (label -1). k-means is scikit-learn's: `KMeans` (k-means++, 3 initialisations) up to
`MINIBATCH_ABOVE` records, `MiniBatchKMeans` (batches of 4096, 3 initialisations) above, both
seeded from `(seed, CLUSTER_STREAM)` and run on one thread: the same seed gives the same
clusters whatever the machine's cores (and the many small steps of mini-batch k-means are
faster on one thread than across a busy machine's). Cluster numbers are then ordered by each
cluster's first record in input order; fewer distinct records than K leave empty clusters
(counted in the run record).

K, unless given: `min(100, max(2, round(sqrt(N / 2))), max(budget, 1), N)` for N clustered
records: the sqrt(N/2) rule of thumb, at most 100 (each cluster then holds at least 1% of a
large pool on average, and k-means stays cheap at a million records), at most the budget (so
that even allocation can give every cluster a record).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa

from .errors import GradfilterError
from .seeds import CLUSTER_STREAM, SKETCH_PROJECTION_STREAM, derived_seed
from .table import (
    load_columns,
    open_table,
    project_sketches,
    recorded_epochs,
    sketch_epochs,
    stat_columns,
    stats_meta,
    table_column_names,
    table_rows,
)

ClusterFeatures = Literal["trajectory", "loss", "trajectory+sketch"]
CLUSTER_FEATURES: tuple[str, ...] = get_args(ClusterFeatures)
DEFAULT_FEATURES: ClusterFeatures = "trajectory"
MAX_K = 100
SKETCH_DIMS = 32
MINIBATCH_ABOVE = 100_000
N_INIT = 3
MINIBATCH_SIZE = 4096


@dataclass(frozen=True)
class Clustering:
    """Every record's cluster (-1: not clustered) and how the clusters were made."""

    labels: np.ndarray  # [records] int32
    k: int
    k_rule: str  # "given", or the rule with its numbers
    features: str
    columns: list[str]  # the table columns of the trajectory block
    algorithm: str
    clustered: int  # records with a finite trajectory
    sizes: list[int] = field(default_factory=list)  # records per cluster, cluster order

    def as_dict(self) -> dict:
        return {"k": self.k, "k_rule": self.k_rule, "features": self.features,
                "columns": self.columns, "algorithm": self.algorithm,
                "clustered": self.clustered, "empty_clusters": self.sizes.count(0)}


def default_k(n_clustered: int, budget: int) -> int:
    """K when not given (module docstring)."""
    rule = max(2, round(math.sqrt(n_clustered / 2)))
    return max(1, min(MAX_K, rule, max(budget, 1), n_clustered))


def trajectory_columns(names: list[str], features: str) -> list[str]:
    """The table columns of the trajectory block, epoch by epoch, losses then squared norms,
    member by member; a one-line error where the table has no trajectories."""
    if features not in CLUSTER_FEATURES:
        raise GradfilterError(f"--cluster-features must be one of {list(CLUSTER_FEATURES)}, "
                              f"got {features!r}")
    epochs = recorded_epochs(names)
    if not epochs:
        raise GradfilterError(
            "--stratify clusters needs the training trajectories of a G-SNR table (its "
            "loss_e*_m* and sqnorm_e*_m* columns); this table has none (scored by a "
            "baseline?)")
    stats = ("loss",) if features == "loss" else ("loss", "sqnorm")
    columns = []
    for epoch in epochs:
        for stat in stats:
            try:
                columns += stat_columns(names, stat, epoch)
            except GradfilterError as exc:
                raise GradfilterError(f"--stratify clusters: {exc}") from None
    return columns


def trajectory_block(values: np.ndarray, columns: list[str]) -> np.ndarray:
    """The standardised trajectory features of finite rows `values` ([records, columns]
    float32), written over them."""
    for k, name in enumerate(columns):
        column = values[:, k].astype(np.float64)
        if name.startswith("sqnorm"):
            positive = column[column > 0]
            floor = positive.min() if len(positive) else 1.0
            column = np.log(np.maximum(column, floor))
        values[:, k] = _standardised(column)
    return values


def _standardised(column: np.ndarray) -> np.ndarray:
    spread = column.std()
    if not spread > 0:
        return np.zeros_like(column)
    return (column - column.mean()) / spread


def sketch_block(stats: str | Path | pa.Table, names: list[str], rows: np.ndarray,
                 seed: int) -> np.ndarray:
    """The late epoch's sketch features of `rows`, projected to SKETCH_DIMS numbers, centred."""
    epochs = sketch_epochs(names)
    if not epochs:
        raise GradfilterError("--cluster-features trajectory+sketch needs the table's gradient "
                              "sketches (sketch_e*_m* columns; scored with --sketch-dim 0?)")
    late = stats_meta(stats).get("late", epochs[-1])
    if late not in epochs:
        late = epochs[-1]
    members = [c for c in names if c.startswith(f"sketch_e{late}_m")]
    dim = _sketch_dim(stats, members[0])
    rng = np.random.default_rng(derived_seed(seed, SKETCH_PROJECTION_STREAM))
    planes = (rng.standard_normal((len(members) * dim, SKETCH_DIMS))
              / math.sqrt(SKETCH_DIMS)).astype(np.float32)
    projected = project_sketches(stats, late, planes)
    if len(rows) < len(projected):
        projected = projected[rows]
    projected -= projected.mean(axis=0, dtype=np.float64).astype(np.float32)
    return projected


def _sketch_dim(stats: str | Path | pa.Table, column: str) -> int:
    schema = stats.schema if isinstance(stats, pa.Table) else open_table(Path(stats)).schema_arrow
    return int(schema.field(column).type.list_size)


def _unit_variance(block: np.ndarray) -> np.ndarray:
    """The block scaled, in place, to a total variance of 1 (left as is where it has none)."""
    total = float(block.var(axis=0, dtype=np.float64).sum())
    if total > 0:
        block /= np.float32(math.sqrt(total))
    return block


def features_of(stats: str | Path | pa.Table, features: str = DEFAULT_FEATURES,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(the clustered records' positions, their feature rows [n, F] float32, the trajectory
    columns). Reads only the columns it needs, batch by batch."""
    names = table_column_names(stats)
    columns = trajectory_columns(names, features)
    values = load_columns(stats, columns)
    rows = np.flatnonzero(np.isfinite(values).all(axis=1))
    block = trajectory_block(values if len(rows) == len(values) else values[rows], columns)
    del values
    if features != "trajectory+sketch":
        return rows, block, columns
    sketch = _unit_variance(sketch_block(stats, names, rows, seed))
    return rows, np.hstack([_unit_variance(block), sketch]), columns


def cluster_records(stats: str | Path | pa.Table, *, k: int | None = None, budget: int,
                    features: str = DEFAULT_FEATURES, seed: int = 0) -> Clustering:
    """Every record's cluster by k-means over its trajectory features (module docstring)."""
    rows, matrix, columns = features_of(stats, features, seed)
    n_records = table_rows(stats)
    if k is not None and k > len(rows):
        raise GradfilterError(
            f"--stratify clusters:{k} asks for {k} clusters but the table has only "
            f"{len(rows)} scored records to cluster")
    if not len(rows):
        raise GradfilterError("--stratify clusters: the table has no scored record to cluster")
    chosen_k = k if k is not None else default_k(len(rows), budget)
    rule = "given" if k is not None else (
        f"min({MAX_K}, max(2, round(sqrt(N/2))), max(budget, 1), N) with N = {len(rows)}, "
        f"budget = {budget}")
    found, algorithm = _kmeans(matrix, chosen_k, seed)
    labels = np.full(n_records, -1, dtype=np.int32)
    labels[rows] = _in_first_appearance_order(found, chosen_k)
    sizes = np.bincount(labels[rows], minlength=chosen_k).tolist()
    return Clustering(labels, chosen_k, rule, features, columns, algorithm, len(rows), sizes)


def _kmeans(matrix: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, str]:
    """Cluster labels of the rows of `matrix` (scikit-learn), seeded."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    state = derived_seed(seed, CLUSTER_STREAM) % (2**32)
    if k == 1:
        return np.zeros(len(matrix), dtype=np.int64), "one cluster"
    if len(matrix) > MINIBATCH_ABOVE:
        model = MiniBatchKMeans(n_clusters=k, n_init=N_INIT, batch_size=MINIBATCH_SIZE,
                                random_state=state)
        name = f"MiniBatchKMeans (batch {MINIBATCH_SIZE}, {N_INIT} initialisations)"
    else:
        model = KMeans(n_clusters=k, n_init=N_INIT, random_state=state)
        name = f"KMeans (k-means++, {N_INIT} initialisations)"
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k
        labels = model.fit_predict(matrix)
    return np.asarray(labels, dtype=np.int64), name


def _in_first_appearance_order(labels: np.ndarray, k: int) -> np.ndarray:
    """Cluster numbers renamed so that cluster 0 holds the first record, 1 the first record
    not in cluster 0, and so on (clusters with no record last): stable reports."""
    first = np.full(k, len(labels), dtype=np.int64)
    np.minimum.at(first, labels, np.arange(len(labels)))
    order = np.argsort(first, kind="stable")
    rename = np.empty(k, dtype=np.int32)
    rename[order] = np.arange(k, dtype=np.int32)
    return rename[labels]
