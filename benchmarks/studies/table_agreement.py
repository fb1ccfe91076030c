"""How far two statistics tables of the same records rank them alike, utility by utility.

For two G-SNR tables scored on the same data with one setting changed (`--collect during`
against `snapshot`, `--epochs 2` against 4, two seeds...): per utility both tables can
compute, Spearman's rank correlation and the overlap of the top 10% (as `select` ranks),
over the records both rank. With `--labels` (a `bench noise` labels file of the same
records), also each table's AUROC of clean against corrupted records over the records both
scored, as `bench noise` counts it, and their paired difference (second minus first), with
95% bootstrap intervals over records. Prints a
Markdown table.

    python benchmarks/studies/table_agreement.py runs/sg300/tables/gsnr.parquet \
        runs/sg300/tables/gsnr-snapshot.parquet --labels runs/sg300/labels-s0.parquet
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq
from utility_study import cell

from gradfilter.bench.intervals import Ranking, percentile_interval, resample_weights
from gradfilter.bench.speed import rank_agreement
from gradfilter.errors import GradfilterError
from gradfilter.table import available_utilities, load_stats, utility_scores


def agreement(first: str, second: str, top: float, labels: str | None = None,
              resamples: int = 1000) -> dict[str, dict]:
    tables = [load_stats(path) for path in (first, second)]
    if tables[0].num_rows != tables[1].num_rows:
        raise SystemExit(f"{first} and {second} hold different numbers of records")
    # As `bench noise` counts them: the records both tables scored (a gated-out record is
    # scored, and ranks last).
    scored = np.logical_and(*(t["skip_reason"].is_null().to_numpy(zero_copy_only=False)
                              for t in tables))
    clean = (None if labels is None else np.array(
        [c is None for c in pq.read_table(labels)["corruption"].to_pylist()])[scored])
    weights = resample_weights(int(scored.sum()), resamples) if labels else None
    offered = set(available_utilities(tables[1]))
    names = [u for u in available_utilities(tables[0]) if u in offered]
    result = {}
    for name in names:
        a, b = (utility_scores(table, name) for table in tables)
        both = np.isfinite(a) & np.isfinite(b)
        result[name] = rank_agreement(a[both], b[both], top) | {"records": int(both.sum())}
        if clean is not None:
            result[name] |= paired_aurocs(a[scored], b[scored], clean, weights)
    return result


def paired_aurocs(a: np.ndarray, b: np.ndarray, clean: np.ndarray, weights: np.ndarray
                  ) -> dict[str, dict]:
    """Both AUROCs (non-finite scores rank last) and the paired difference b - a."""
    rankings = Ranking(a), Ranking(b)
    estimates = [r.auroc(clean) for r in rankings]
    draws = np.array([[r.auroc(clean, w) for r in rankings] for w in weights])
    return {"auroc_first": percentile_interval(estimates[0], draws[:, 0]).as_dict(),
            "auroc_second": percentile_interval(estimates[1], draws[:, 1]).as_dict(),
            "difference": percentile_interval(estimates[1] - estimates[0],
                                              draws[:, 1] - draws[:, 0]).as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--top", type=float, default=0.1)
    parser.add_argument("--labels", default=None)
    args = parser.parse_args()
    try:
        rows = agreement(args.first, args.second, args.top, args.labels)
    except GradfilterError as exc:  # a missing or unreadable table: one line, no traceback
        raise SystemExit(f"error: {exc}") from None
    extra = " AUROC, first | AUROC, second | second - first |" if args.labels else ""
    print(f"| utility | records | Spearman | top-{args.top:.0%} overlap |{extra}")
    print("| --- | --- | --- | --- |" + " --- |" * (3 if args.labels else 0))
    for name, row in rows.items():
        line = f"| {name} | {row['records']} | {row['spearman']:.3f} | {row['top_overlap']:.2f} |"
        if args.labels:
            line += (f" {cell(row['auroc_first'])} | {cell(row['auroc_second'])} | "
                     f"{cell(row['difference'], signed=True)} |")
        print(line)


if __name__ == "__main__":
    main()
