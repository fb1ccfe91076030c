"""Compare every utility across `bench noise` runs, on the corruption kinds the benchmark
injects and, apart, on held-out kinds no utility was designed against.

For each run directory (its results.json, labels and tables) and each method: AUROC of clean
against the standard kinds (swap, truncate, repeat, echo) and against the held-out kinds
(everything else present: refusal, shuffle, boilerplate, near_duplicate...), with 95%
bootstrap intervals, plus the overall contamination at 10% from results.json. Prints one
Markdown table per run and a ranking of the methods by their worst AUROC over all runs and
both groups (a utility that only catches the kinds it was shown has a low worst case).

`--gate ifd` adds the hybrids of method.md §4 where the run has both an IFD and a G-SNR table:
each G-SNR utility among the records Superfiltering would keep (IFD < 1), the others ranked
after them (written `u|ifd<1`). They combine two tables, so they are studied here before any
of them is worth a column of its own.

    python benchmarks/utility_study.py runs/sg600 runs/sinstruct252 --gate ifd
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from gradfilter.bench.intervals import Ranking, percentile_interval, resample_weights
from gradfilter.table import load_stats, utility_scores
from gradfilter.utilities import UTILITIES

STANDARD = ("swap", "truncate", "repeat", "echo")


def run_scores(run_dir: Path, seed: str, gate: str | None
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every method's scores over the records all methods scored (and the gated hybrids), and
    those records' labels ("" where clean)."""
    results = json.loads((run_dir / "results.json").read_text())
    draw = results["seeds"][seed]
    labels = np.array([label or "" for label in
                       pq.read_table(run_dir / draw["labels"])["corruption"].to_pylist()])
    scores, scored = {}, np.ones(len(labels), dtype=bool)
    for method, path in draw["tables"].items():
        table = load_stats(path)
        scored &= table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
        scores[method] = utility_scores(table, method)
    if gate == "ifd" and "ifd" in scores:
        kept_by_ifd = scores["ifd"] < 1  # NaN (unscored) compares False
        for method in [m for m in scores if m in UTILITIES]:
            scores[f"{method}|ifd<1"] = np.where(kept_by_ifd, scores[method], -np.inf)
    return {m: s[scored] for m, s in scores.items()}, labels[scored]


def group_aurocs(run_dir: Path, seed: str, resamples: int, gate: str | None = None
                 ) -> dict[str, dict[str, dict]]:
    all_scores, kept = run_scores(run_dir, seed, gate)
    kinds = sorted(set(kept) - {""})
    groups = {"standard": [k for k in kinds if k in STANDARD],
              "held-out": [k for k in kinds if k not in STANDARD]}
    weights = resample_weights(len(kept), resamples, seed=0)
    out: dict[str, dict[str, dict]] = {}
    for method, scores in all_scores.items():
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
        ranking, corrupted = Ranking(scores), kept != ""
        draws = [ranking.top_share(corrupted, 0.1, w) for w in weights]
        out[method]["contamination@0.1"] = percentile_interval(
            ranking.top_share(corrupted, 0.1), np.array(draws)).as_dict()
    return out


def cell(i: dict) -> str:
    return f"{i['estimate']:.3f} [{i['low']:.3f}, {i['high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--seed", default="0", help="the corruption seed to read")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--gate", choices=["ifd"], default=None,
                        help="add each G-SNR utility gated by IFD < 1 (a hybrid)")
    args = parser.parse_args()
    worst: dict[str, list[float]] = {}
    for run in args.runs:
        study = group_aurocs(run, args.seed, args.resamples, args.gate)
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
