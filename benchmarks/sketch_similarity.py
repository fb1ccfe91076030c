"""How similar the gradient sketches of a `bench noise` run's records are, by kind of pair.

Reads OUT_DIR/labels.parquet and the G-SNR table under OUT_DIR/scores/ (a run with sketches),
computes the similarity dedup uses (mean over members of the late-epoch sketch cosine) for every
pair of scored records, and prints its quantiles for pairs of records that are both
`near_duplicate`, pairs of other records of one corruption kind, and all other pairs; then, for
thresholds 0.5 to 0.99, how many pairs of each group reach it. The default threshold of
`--diversity-threshold` was chosen from this table (docs/results.md).

    python benchmarks/sketch_similarity.py runs/sinstruct64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from gradfilter.table import load_sketch_features

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    labels = np.array([x or "" for x in
                       pq.read_table(args.out_dir / "labels.parquet")["corruption"].to_pylist()])
    table = next(p for p in sorted((args.out_dir / "scores").glob("gsnr-*.parquet")))
    scored = pq.read_table(table, columns=["skip_reason"])["skip_reason"].is_null().to_numpy(
        zero_copy_only=False)
    rows = np.flatnonzero(scored)
    features = load_sketch_features(table, rows).astype(np.float32)
    features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-30)
    similarity = features @ features.T
    kinds = labels[rows]
    upper = np.triu(np.ones_like(similarity, dtype=bool), 1)
    same = kinds[:, None] == kinds[None, :]
    groups = {
        "near_duplicate pairs": upper & same & (kinds[:, None] == "near_duplicate"),
        "other same-kind corrupted pairs": upper & same & (kinds[:, None] != "")
        & (kinds[:, None] != "near_duplicate"),
        "all other pairs": upper & ~(same & (kinds[:, None] != "")),
    }
    print(f"{table.name}: {len(rows)} scored records, kinds "
          f"{dict(zip(*np.unique(kinds, return_counts=True), strict=True))}")
    print(f"{'pairs':<34}{'n':>7}" + "".join(f"{q:>8}" for q in ("min", "q50", "q90", "q99",
                                                                 "max")))
    for name, mask in groups.items():
        values = similarity[mask]
        quantiles = np.quantile(values, [0, 0.5, 0.9, 0.99, 1]) if len(values) else []
        print(f"{name:<34}{len(values):>7}" + "".join(f"{v:>8.3f}" for v in quantiles))
    print("pairs at or above each threshold:")
    print(f"{'threshold':<34}" + "".join(f"{t:>8}" for t in THRESHOLDS))
    for name, mask in groups.items():
        values = similarity[mask]
        print(f"{name:<34}" + "".join(f"{int((values >= t).sum()):>8}" for t in THRESHOLDS))


if __name__ == "__main__":
    main()
