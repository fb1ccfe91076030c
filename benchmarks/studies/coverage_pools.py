"""Coverage on the trend pools (docs/results.md, "Coverage on the trend pools", pre-registered):
each selection's contamination at 5% and 10% from the stored tables, its paired differences
against random's expectation, `length` and the default top-k, and each subset's composition
(response tokens, the share of each corruption kind) beside the pool's.

Every selection is made once on the pool (coverage and s2l with seed 0, by gradfilter's own
selectors); the intervals come from one bootstrap over the records that every selection of a
size shares: a subset is held fixed and its corrupted share is re-counted on each resample (a
record drawn w times counts w times), so a difference between two selections is paired. Reads
`DIR/<N>/labels-s0.parquet` and `DIR/<N>/tables/{gsnr,ifd}.parquet` for every size present;
writes `DIR/coverage.json` and prints the tables.

    python benchmarks/studies/coverage_pools.py runs/trend
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from gradfilter.bench.intervals import percentile_interval, resample_weight_blocks
from gradfilter.bench.selectors import SelectorInputs, selector_subsets
from gradfilter.selection import select_top
from gradfilter.table import load_stats, utility_scores

BUDGETS = (0.05, 0.1)
DEFAULT = "snr-member-gated"
RANKINGS = (DEFAULT, "length", "ifd")
SELECTORS = ("coverage", "s2l")
AGAINST = ("random", "length", DEFAULT)
GROUPS = {"shipped": ("swap", "truncate", "repeat", "echo"),
          "study": ("refusal", "shuffle", "boilerplate"),
          "new": ("html", "flatten", "doubled")}
RESAMPLES = 1000
EXTRA_SEEDS = (1, 2, 3, 4)


def subsets(size_dir: Path, seed: int = 0
            ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Every selection's kept records per budget key, and the records' response tokens."""
    gsnr_path = size_dir / "tables" / "gsnr.parquet"
    gsnr = load_stats(gsnr_path)
    tokens = gsnr["n_response_tokens"].to_numpy().astype(np.float64)
    scores = {DEFAULT: utility_scores(gsnr, DEFAULT), "length": tokens,
              "ifd": utility_scores(load_stats(size_dir / "tables" / "ifd.parquet"), "ifd")}
    chosen = {m: {f"{b:g}": select_top(s, ratio=b).indices for b in BUDGETS}
              for m, s in scores.items()}
    rows = np.flatnonzero(gsnr["skip_reason"].is_null().to_numpy(zero_copy_only=False))
    inputs = SelectorInputs(table=gsnr_path, seed=seed)
    for method in SELECTORS:
        chosen[method] = {key: rows[kept] for key, kept in
                          selector_subsets(method, inputs, rows, BUDGETS).items()}
    return chosen, tokens


def contamination(chosen: dict[str, dict[str, np.ndarray]], bad: np.ndarray) -> dict:
    """Each selection's share of corrupted records per budget, and its paired differences."""
    n = len(bad)
    masks = {m: {k: np.isin(np.arange(n), kept) for k, kept in by.items()}
             for m, by in chosen.items()}
    share = {m: {k: float(bad[mask].mean()) for k, mask in by.items()} for m, by in masks.items()}
    draws: dict[str, dict[str, list]] = {m: {k: [] for k in by} for m, by in masks.items()}
    pool_draws = []
    for weights in resample_weight_blocks(n, RESAMPLES, seed=0):
        pool_draws.append((weights @ bad) / weights.sum(axis=1))
        for m, by in masks.items():
            for k, mask in by.items():
                kept = weights[:, mask]
                draws[m][k].append((kept @ bad[mask]) / kept.sum(axis=1))
    pool = np.concatenate(pool_draws)
    out = {}
    for m, by in draws.items():
        out[m] = {}
        for k, blocks in by.items():
            own = np.concatenate(blocks)
            entry = {"share": share[m][k], "interval": percentile_interval(
                share[m][k], own).as_dict()}
            for other in AGAINST:
                if other == m:
                    continue
                if other == "random":
                    estimate, spread = share[m][k] - float(bad.mean()), own - pool
                else:
                    estimate = share[m][k] - share[other][k]
                    spread = own - np.concatenate(draws[other][k])
                entry[f"minus_{other}"] = percentile_interval(estimate, spread).as_dict()
            out[m][k] = entry
    return out


def composition(chosen: dict[str, dict[str, np.ndarray]], kinds: np.ndarray,
                tokens: np.ndarray) -> dict:
    """Response-token quartiles and each group of kinds' share, per selection and the pool."""
    def describe(rows: np.ndarray) -> dict:
        q = np.percentile(tokens[rows], [25, 50, 75]).tolist()
        shares = {g: float(np.isin(kinds[rows], members).mean())
                  for g, members in GROUPS.items()}
        return {"records": len(rows), "response_tokens_q1_median_q3": q,
                "clean": float((kinds[rows] == "").mean()), **shares}
    out = {"pool": describe(np.arange(len(kinds)))}
    for m, by in chosen.items():
        out[m] = {k: describe(np.asarray(rows)) for k, rows in by.items()}
    return out


def study(size_dir: Path) -> dict:
    raw = pq.read_table(size_dir / "labels-s0.parquet")["corruption"].to_pylist()
    kinds = np.array([k or "" for k in raw])
    chosen, tokens = subsets(size_dir)
    bad = (kinds != "").astype(np.float64)
    by_group = {g: contamination(chosen, np.isin(kinds, members).astype(np.float64))
                for g, members in GROUPS.items()}
    return {"records": len(kinds), "contamination": contamination(chosen, bad),
            "by_group": by_group, "composition": composition(chosen, kinds, tokens),
            "other_seeds": other_seeds(size_dir, bad)}


def other_seeds(size_dir: Path, bad: np.ndarray) -> dict:
    """Not pre-registered: the selectors' contamination under other cluster seeds (1-4), how
    much of a selector's standing is its k-means draw."""
    shares: dict = {m: {f"{b:g}": [] for b in BUDGETS} for m in SELECTORS}
    for seed in EXTRA_SEEDS:
        chosen, _ = subsets(size_dir, seed)
        for m in SELECTORS:
            for key, rows in chosen[m].items():
                shares[m][key].append(float(bad[rows].mean()))
    return shares


def _cell(entry: dict) -> str:
    star = "*" if entry["low"] > 0 or entry["high"] < 0 else ""
    return f"{entry['estimate']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]{star}"


def markdown(results: dict[str, dict]) -> str:
    lines = ["| pool | selection | budget | contamination | - random | - length | - default |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for size, result in results.items():
        for m, by in result["contamination"].items():
            for k, e in by.items():
                cells = [_cell(e[f"minus_{o}"]) if f"minus_{o}" in e else "-" for o in AGAINST]
                lines.append(f"| {size} | {m} | {k} | {e['share']:.3f} | " + " | ".join(cells)
                             + " |")
    lines += ["", "| pool | selection | budget | response tokens q1 / median / q3 | clean | "
              "shipped | study | new |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size, result in results.items():
        for m, by in result["composition"].items():
            for k, c in ({"all": by} if m == "pool" else by).items():
                q = " / ".join(f"{v:.0f}" for v in c["response_tokens_q1_median_q3"])
                lines.append(f"| {size} | {m} | {k} | {q} | {c['clean']:.2f} | "
                             f"{c['shipped']:.2f} | {c['study']:.2f} | {c['new']:.2f} |")
    lines += ["", "| pool | selection | budget | contamination, cluster seeds 1-4 |",
              "| --- | --- | --- | --- |"]
    for size, result in results.items():
        for m, by in result["other_seeds"].items():
            for k, shares in by.items():
                lines.append(f"| {size} | {m} | {k} | "
                             + ", ".join(f"{v:.3f}" for v in shares) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    args = parser.parse_args()
    sizes = sorted(int(p.name) for p in args.dir.iterdir() if p.name.isdigit()
                   and (p / "tables" / "gsnr.parquet").exists()
                   and (p / "tables" / "ifd.parquet").exists())
    results = {str(n): study(args.dir / str(n)) for n in sizes}
    (args.dir / "coverage.json").write_text(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
