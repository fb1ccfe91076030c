"""Compare every utility across `bench noise` runs, on the corruption kinds the benchmark
injects and, apart, on held-out kinds no utility was designed against.

For each run directory (its results.json, labels and tables) and each method: AUROC of clean
against the standard kinds (swap, truncate, repeat, echo) and against the held-out kinds
(everything else present: refusal, shuffle, boilerplate, near_duplicate...), with 95%
bootstrap intervals, plus the overall contamination at 10% from results.json. Prints one
Markdown table per run and a ranking of the methods by their worst AUROC over all runs and
both groups (a utility that only catches the kinds it was shown has a low worst case).

    python benchmarks/utility_study.py runs/sg600 runs/sinstruct252
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from gradfilter.bench.intervals import Ranking, percentile_interval, resample_weights
from gradfilter.table import load_stats, utility_scores

STANDARD = ("swap", "truncate", "repeat", "echo")


def group_aurocs(run_dir: Path, seed: str, resamples: int) -> dict[str, dict[str, dict]]:
    results = json.loads((run_dir / "results.json").read_text())
    draw = results["seeds"][seed]
    labels = np.array([label or "" for label in
                       pq.read_table(run_dir / draw["labels"])["corruption"].to_pylist()])
    kinds = sorted(set(labels) - {""})
    groups = {"standard": [k for k in kinds if k in STANDARD],
              "held-out": [k for k in kinds if k not in STANDARD]}
    out: dict[str, dict[str, dict]] = {}
    weights = None
    for method, path in draw["tables"].items():
        table = load_stats(path)
        scored = table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
        scores, kept = utility_scores(table, method)[scored], labels[scored]
        if weights is None:
            weights = resample_weights(len(kept), resamples, seed=0)
        out[method] = {}
        for group, members in groups.items():
            if not members:
                continue
            rows = (kept == "") | np.isin(kept, members)
            clean = kept[rows] == ""
            ranking = Ranking(scores[rows])
            draws = [ranking.auroc(clean, w[rows]) for w in weights]
            out[method][group] = percentile_interval(ranking.auroc(clean), np.array(draws)
                                                     ).as_dict()
        out[method]["contamination@0.1"] = draw["methods"][method]["contamination@0.1"]
    return out


def cell(i: dict) -> str:
    return f"{i['estimate']:.3f} [{i['low']:.3f}, {i['high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--seed", default="0", help="the corruption seed to read")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    worst: dict[str, list[float]] = {}
    for run in args.runs:
        study = group_aurocs(run, args.seed, args.resamples)
        print(f"\n## {run}\n\n| method | AUROC, standard kinds | AUROC, held-out kinds | "
              "contamination @10% |\n| --- | --- | --- | --- |")
        for method, m in study.items():
            print(f"| {method} | {cell(m['standard'])} | "
                  f"{cell(m['held-out']) if 'held-out' in m else '-'} | "
                  f"{cell(m['contamination@0.1'])} |")
            worst.setdefault(method, []).extend(
                m[g]["estimate"] for g in ("standard", "held-out") if g in m)
    print("\n## Worst AUROC over runs and groups\n\n| method | worst | mean |\n| --- | --- | --- |")
    for method, values in sorted(worst.items(), key=lambda kv: -min(kv[1])):
        print(f"| {method} | {min(values):.3f} | {np.mean(values):.3f} |")


if __name__ == "__main__":
    main()
