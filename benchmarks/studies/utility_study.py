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
of them is worth a column of its own. `--consensus` adds two scores of the gradient's
direction, from the G-SNR table's late-epoch sketches (`consensus` below, and `consensus-unit`,
every record's pull of equal weight). `--group NAME=KIND,KIND` reports those kinds as a
group of their own (the rest stay "held-out"); `--versus random,ifd` adds each group's paired
AUROC differences to those methods.

    python benchmarks/studies/utility_study.py runs/sg600 runs/sinstruct252 --gate ifd
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gradfilter.bench.intervals import Ranking, percentile_interval, resample_weights
from gradfilter.bench.noise import run_table
from gradfilter.table import (
    load_sketch_features,
    load_stats,
    sketch_member_columns,
    table_epochs,
    utility_scores,
)
from gradfilter.utilities import UTILITIES

STANDARD = ("swap", "truncate", "repeat", "echo")


def consensus(table: pa.Table, weighted: bool = True) -> np.ndarray:
    """Per record, the mean over members of the cosine between its late-epoch gradient sketch
    and the sum of every other scored record's (each weighted by its norm, or of unit length):
    how far the record pulls the member the way the rest of the pool does. NaN where
    unscored."""
    scored = np.flatnonzero(table["skip_reason"].is_null().to_numpy(zero_copy_only=False))
    columns = sketch_member_columns(table.column_names, table_epochs(table)[1])
    members = len(columns)
    features = load_sketch_features(table, scored).astype(np.float64) * np.sqrt(members)
    dim = features.shape[1] // members
    total = np.zeros(len(scored))
    for k, column in enumerate(columns):
        unit = features[:, k * dim:(k + 1) * dim]
        norms = table[column.replace("sketch", "sketchnorm", 1)].to_numpy()[scored]
        pull = unit * norms[:, None] if weighted else unit
        others = pull.sum(axis=0) - pull
        total += (unit * others).sum(axis=1) / np.maximum(np.linalg.norm(others, axis=1), 1e-30)
    scores = np.full(table.num_rows, np.nan)
    scores[scored] = total / members
    return scores


def run_scores(run_dir: Path, seed: str, gate: str | None, with_consensus: bool = False
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every method's scores over the records all methods scored (and the gated hybrids, and
    the consensus scores), and those records' labels ("" where clean)."""
    results = json.loads((run_dir / "results.json").read_text())
    draw = results["seeds"][seed]
    labels = np.array([label or "" for label in
                       pq.read_table(run_dir / draw["labels"])["corruption"].to_pylist()])
    scores, scored = {}, np.ones(len(labels), dtype=bool)
    tables: dict[str, pa.Table] = {}  # one read per file: most methods share the G-SNR table
    paths = {method: str(run_table(run_dir, path)) for method, path in draw["tables"].items()}
    for method, path in paths.items():
        if path not in tables:
            tables[path] = load_stats(path)
        table = tables[path]
        scored &= table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
        scores[method] = utility_scores(table, method)
    if gate == "ifd" and "ifd" in scores:
        kept_by_ifd = scores["ifd"] < 1  # NaN (unscored) compares False
        for method in [m for m in scores if m in UTILITIES]:
            scores[f"{method}|ifd<1"] = np.where(kept_by_ifd, scores[method], -np.inf)
    if with_consensus:
        table = tables.get(paths.get("gsnr"))
        if table is None or not any(c.startswith("sketch_") for c in table.column_names):
            raise SystemExit(f"error: {run_dir} has no G-SNR table with gradient sketches "
                             "(scored with --sketch-dim > 0); --consensus needs one")
        scores["consensus"] = consensus(table)
        scores["consensus-unit"] = consensus(table, weighted=False)
    return {m: s[scored] for m, s in scores.items()}, labels[scored]


def kind_groups(kinds: list[str], named: dict[str, list[str]]) -> dict[str, list[str]]:
    """The standard kinds, each named group, and "held-out": every other kind present."""
    grouped = {"standard": [k for k in kinds if k in STANDARD]}
    grouped |= {name: [k for k in kinds if k in members] for name, members in named.items()}
    taken = {k for members in grouped.values() for k in members}
    return grouped | {"held-out": [k for k in kinds if k not in taken]}


def group_aurocs(run_dir: Path, seed: str, resamples: int, gate: str | None = None,
                 named: dict[str, list[str]] | None = None, versus: tuple[str, ...] = (),
                 with_consensus: bool = False) -> dict[str, dict[str, dict]]:
    """Per method: each group's AUROC, the contamination at 10%, and (under "-<ref>") each
    group's paired AUROC difference to the methods in `versus`; 95% bootstrap intervals."""
    all_scores, kept = run_scores(run_dir, seed, gate, with_consensus)
    groups = kind_groups(sorted(set(kept) - {""}), named or {})
    weights = resample_weights(len(kept), resamples, seed=0)
    draws: dict[tuple[str, str], tuple[float, np.ndarray]] = {}
    out: dict[str, dict[str, dict]] = {}
    for method, scores in all_scores.items():
        out[method] = {}
        for group, members in groups.items():
            if not members:
                continue
            rows = (kept == "") | np.isin(kept, members)
            clean = kept[rows] == ""
            ranking = Ranking(scores[rows])
            draws[method, group] = (ranking.auroc(clean),
                                    np.array([ranking.auroc(clean, w[rows]) for w in weights]))
            out[method][group] = percentile_interval(*draws[method, group]).as_dict()
        ranking, corrupted = Ranking(scores), kept != ""
        shares = [ranking.top_share(corrupted, 0.1, w) for w in weights]
        out[method]["contamination@0.1"] = percentile_interval(
            ranking.top_share(corrupted, 0.1), np.array(shares)).as_dict()
    for (method, group), (estimate, values) in draws.items():
        for ref in (r for r in versus if r != method and (r, group) in draws):
            ref_estimate, ref_values = draws[ref, group]
            out[method].setdefault(f"-{ref}", {})[group] = percentile_interval(
                estimate - ref_estimate, values - ref_values).as_dict()
    return out


def cell(i: dict, signed: bool = False) -> str:
    text = (f"{i['estimate']:+.3f} [{i['low']:+.3f}, {i['high']:+.3f}]" if signed else
            f"{i['estimate']:.3f} [{i['low']:.3f}, {i['high']:.3f}]")
    return text + ("*" if signed and (i["low"] > 0 or i["high"] < 0) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--seed", default="0", help="the corruption seed to read")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--gate", choices=["ifd"], default=None,
                        help="add each G-SNR utility gated by IFD < 1 (a hybrid)")
    parser.add_argument("--consensus", action="store_true",
                        help="add the gradient-direction scores `consensus`, `consensus-unit`")
    parser.add_argument("--group", action="append", default=[], metavar="NAME=KIND,KIND",
                        help="report these kinds as a group of their own (repeatable)")
    parser.add_argument("--versus", default="",
                        help="comma-separated methods to print paired AUROC differences to")
    args = parser.parse_args()
    versus = tuple(filter(None, args.versus.split(",")))
    named = {name: kinds.split(",") for name, kinds in (g.split("=", 1) for g in args.group)}
    columns = ["standard", *named, "held-out"]
    worst: dict[str, list[float]] = {}
    missing = [str(run) for run in args.runs if not (run / "results.json").is_file()]
    if missing:
        raise SystemExit(f"error: no bench noise results.json in {', '.join(missing)}")
    for run in args.runs:
        study = group_aurocs(run, args.seed, args.resamples, args.gate, named, versus,
                             args.consensus)
        print(f"\n## {run}\n\n| method | "
              + " | ".join(f"AUROC, {g} kinds" for g in columns)
              + " | contamination @10% |\n|" + " --- |" * (len(columns) + 2))
        for method, m in study.items():
            print(f"| {method} | " + " | ".join(cell(m[g]) if g in m else "-" for g in columns)
                  + f" | {cell(m['contamination@0.1'])} |")
            worst.setdefault(method, []).extend(m[g]["estimate"] for g in columns if g in m)
        for ref in versus:
            print(f"\n### {run}: AUROC minus {ref}'s (paired; *: the interval excludes zero)\n\n"
                  "| method | " + " | ".join(columns) + " |\n|" + " --- |" * (len(columns) + 1))
            for method, m in study.items():
                if f"-{ref}" in m:
                    print(f"| {method} | " + " | ".join(
                        cell(m[f"-{ref}"][g], signed=True) if g in m[f"-{ref}"] else "-"
                        for g in columns) + " |")
    print("\n## Worst AUROC over runs and groups\n\n| method | worst | mean |\n| --- | --- | --- |")
    for method, values in sorted(worst.items(), key=lambda kv: -min(kv[1])):
        print(f"| {method} | {min(values):.3f} | {np.mean(values):.3f} |")


if __name__ == "__main__":
    main()
