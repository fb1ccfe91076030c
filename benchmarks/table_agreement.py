"""How far two statistics tables of the same records rank them alike, utility by utility.

For two G-SNR tables scored on the same data with one setting changed (`--collect during`
against `snapshot`, `--epochs 2` against 4, two seeds...): per utility both tables can
compute, Spearman's rank correlation and the overlap of the top 10% (as `select` ranks),
over the records both scored. Prints a Markdown table.

    python benchmarks/table_agreement.py runs/sg300/tables/gsnr.parquet \
        runs/sg300/tables/gsnr-snapshot.parquet
"""

from __future__ import annotations

import argparse

import numpy as np

from gradfilter.bench.speed import rank_agreement
from gradfilter.table import available_utilities, load_stats, utility_scores


def agreement(first: str, second: str, top: float) -> dict[str, dict[str, float]]:
    tables = [load_stats(path) for path in (first, second)]
    if tables[0].num_rows != tables[1].num_rows:
        raise SystemExit(f"{first} and {second} hold different numbers of records")
    names = [u for u in available_utilities(tables[0]) if u in available_utilities(tables[1])]
    result = {}
    for name in names:
        a, b = (utility_scores(table, name) for table in tables)
        both = np.isfinite(a) & np.isfinite(b)
        result[name] = rank_agreement(a[both], b[both], top) | {"records": int(both.sum())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--top", type=float, default=0.1)
    args = parser.parse_args()
    print(f"| utility | records | Spearman | top-{args.top:.0%} overlap |")
    print("| --- | --- | --- | --- |")
    for name, row in agreement(args.first, args.second, args.top).items():
        print(f"| {name} | {row['records']} | {row['spearman']:.3f} | {row['top_overlap']:.2f} |")


if __name__ == "__main__":
    main()
