"""The trend study's noise verdicts from its stored tables (docs/results.md, "Trend with pool
size"): every method's AUROC and contamination at 10% at each pool size, the paired differences
against random's expectation, IFD and `length`, the trend from the smallest to the largest pool,
and whether the 300 shared records' scores settle as the pool grows.

One bootstrap serves every size: records are resampled within each segment (0-299, 300-999,
1,000-2,999), so every pool sees the same resampled records and a difference between sizes is
paired. Reads `DIR/<N>/labels-s0.parquet` and `DIR/<N>/tables/{gsnr,ifd}.parquet` for every
size present; writes `DIR/trend.json`, `DIR/trend.md` and `DIR/trend-noise.png`.

    python benchmarks/studies/trend.py runs/trend
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from gradfilter.bench.intervals import Ranking, percentile_interval
from gradfilter.table import load_stats, utility_scores

GSNR_METHODS = ("snr-member-gated", "snr-member", "gsnr", "gsnr-cv", "drop", "loss")
METHODS = (*GSNR_METHODS, "ifd", "length", "perplexity-low", "perplexity-high")
GROUPS = {"shipped": ("swap", "truncate", "repeat", "echo"),
          "study": ("refusal", "shuffle", "boilerplate"),
          "new": ("html", "flatten", "doubled")}
BUDGET = 0.1
RESAMPLES = 1000


def method_scores(size_dir: Path) -> dict[str, np.ndarray]:
    """Every method's scores of one pool, from its two stored tables."""
    gsnr = load_stats(size_dir / "tables" / "gsnr.parquet")
    ifd = load_stats(size_dir / "tables" / "ifd.parquet")
    perplexity = ifd["perplexity"].to_numpy(zero_copy_only=False).astype(np.float64)
    scores = {m: utility_scores(gsnr, m) for m in GSNR_METHODS}
    scores["ifd"] = utility_scores(ifd, "ifd")
    scores["length"] = gsnr["n_response_tokens"].to_numpy().astype(np.float64)
    scores["perplexity-low"], scores["perplexity-high"] = -perplexity, perplexity
    return scores


def labels_of(size_dir: Path) -> np.ndarray:
    kinds = pq.read_table(size_dir / "labels-s0.parquet")["corruption"].to_pylist()
    return np.array([k or "" for k in kinds])


def segment_weights(sizes: list[int], resamples: int, seed: int = 0) -> np.ndarray:
    """[resamples, largest size] multiplicities, resampled within each segment."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, sizes[-1]))
    for start, stop in zip([0, *sizes], sizes, strict=False):
        draws = rng.integers(start, stop, (resamples, stop - start))
        for r in range(resamples):
            weights[r] += np.bincount(draws[r], minlength=sizes[-1])
    return weights


def measures(ranking: Ranking, labels: np.ndarray, w: np.ndarray | None) -> dict[str, float]:
    """AUROC (clean above corrupted) overall and per group of kinds, contamination at 10%."""
    clean = labels == ""
    out = {"auroc": ranking.auroc(clean, w),
           "contamination": ranking.top_share(~clean, BUDGET, w)}
    for group, kinds in GROUPS.items():
        keep = (clean | np.isin(labels, kinds)).astype(np.float64)
        out[f"auroc_{group}"] = ranking.auroc(clean, keep if w is None else w * keep)
    return out


def expectation(labels: np.ndarray, w: np.ndarray | None) -> dict[str, float]:
    """Random's expected measures on the same (resampled) records."""
    corrupted = (labels != "").astype(np.float64)
    rate = corrupted.mean() if w is None else (w * corrupted).sum() / w.sum()
    return {"auroc": 0.5, "contamination": float(rate),
            **{f"auroc_{g}": 0.5 for g in GROUPS}}


def study(directory: Path, resamples: int) -> dict:
    sizes = sorted(int(p.name) for p in directory.iterdir()
                   if p.name.isdigit() and (p / "tables" / "ifd.parquet").is_file())
    labels = {n: labels_of(directory / str(n)) for n in sizes}
    scores = {n: method_scores(directory / str(n)) for n in sizes}
    rankings = {n: {m: Ranking(s) for m, s in scores[n].items()} for n in sizes}
    weights = segment_weights(sizes, resamples)

    def all_measures(w_full: np.ndarray | None) -> dict:
        table = {}
        for n in sizes:
            w = None if w_full is None else w_full[:n]
            table[n] = {m: measures(r, labels[n], w) for m, r in rankings[n].items()}
            table[n]["random"] = expectation(labels[n], w)
        return table

    point, draws = all_measures(None), [all_measures(w) for w in weights]
    return {"sizes": sizes, "resamples": resamples, "budget": BUDGET,
            "corrupted": {n: int((labels[n] != "").sum()) for n in sizes},
            "methods": {m: summarise(m, sizes, point, draws) for m in (*METHODS, "random")},
            "settling": settling(scores, sizes),
            "length_check": length_check(scores, labels, sizes)}


def summarise(method: str, sizes: list[int], point: dict, draws: list[dict]) -> dict:
    """Per size: each measure, its differences to random, IFD and length; the trend of each
    difference from the smallest to the largest pool."""
    def interval(f) -> dict:
        return percentile_interval(f(point), np.array([f(d) for d in draws])).as_dict()

    result: dict = {"by_size": {}, "trend": {}}
    names = list(point[sizes[0]][method])
    for n in sizes:
        entry = {k: interval(lambda t, n=n, k=k: t[n][method][k]) for k in names}
        for ref in ("random", "ifd", "length"):
            if ref != method:
                entry[f"vs_{ref}"] = {k: interval(
                    lambda t, n=n, k=k, ref=ref: t[n][method][k] - t[n][ref][k]) for k in names}
        result["by_size"][n] = entry
    if len(sizes) > 1 and method != "random":
        first, last = sizes[0], sizes[-1]
        for ref in ("random", "ifd"):
            if ref != method:
                result["trend"][f"vs_{ref}"] = {k: interval(
                    lambda t, k=k, ref=ref: (t[last][method][k] - t[last][ref][k])
                    - (t[first][method][k] - t[first][ref][k])) for k in names}
    return result


def settling(scores: dict[int, dict[str, np.ndarray]], sizes: list[int]) -> dict:
    """Spearman of the shared (first) pool's records' scores between every two sizes."""
    shared = sizes[0]
    out: dict = {}
    for i, a in enumerate(sizes):
        for b in sizes[i + 1:]:
            out[f"{a}-{b}"] = {m: spearman(scores[a][m][:shared], scores[b][m][:shared])
                               for m in (*GSNR_METHODS, "ifd")}
    return out


def length_check(scores: dict[int, dict[str, np.ndarray]], labels: dict[int, np.ndarray],
                 sizes: list[int]) -> dict:
    """Is a utility's separation response length in disguise? (Not pre-registered.) Per size:
    Spearman of each G-SNR utility with `length`, and its AUROC within each quartile of
    response length (where length cannot separate)."""
    out: dict = {}
    for n in sizes:
        length = scores[n]["length"]
        bins = np.digitize(length, np.quantile(length, [0.25, 0.5, 0.75]))
        clean = labels[n] == ""
        out[n] = {m: {"spearman_with_length": spearman(scores[n][m], length),
                      "auroc_within_length_quartiles": [
                          Ranking(scores[n][m][bins == k]).auroc(clean[bins == k], None)
                          for k in range(4)]}
                  for m in (*GSNR_METHODS, "ifd")}
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return float("nan")
    rx, ry = (np.argsort(np.argsort(v[keep])).astype(np.float64) for v in (x, y))
    return float(np.corrcoef(rx, ry)[0, 1])


def markdown(result: dict) -> str:
    """The tables docs/results.md quotes: against random (with the trend), AUROC and the
    difference to IFD (with its trend), contamination at the budget, and the settling."""
    sizes, last = result["sizes"], result["sizes"][-1]
    methods = {m: e for m, e in result["methods"].items() if m != "random"}

    def table(head: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"

    def by(entry: dict, n: int, *keys: str) -> dict | None:
        value = entry["by_size"][size_key(entry["by_size"], n)]
        for key in keys:
            value = value.get(key) if value is not None else None
        return value

    vs_random = table(["method", *[f"AUROC - random @{n}" for n in sizes], "trend"], [
        [m, *[cell(by(e, n, "vs_random", "auroc")) for n in sizes],
         verdict(e["trend"].get("vs_random", {}).get("auroc"))] for m, e in methods.items()])
    vs_ifd = table(["method", *[f"AUROC @{n}" for n in sizes],
                    *[f"- IFD @{n}" for n in sizes], "trend vs IFD",
                    f"shipped / study / new @{last}"], [
        [m, *[interval_cell(by(e, n, "auroc")) for n in sizes],
         *[cell(by(e, n, "vs_ifd", "auroc")) if m != "ifd" else "-" for n in sizes],
         verdict(e["trend"].get("vs_ifd", {}).get("auroc")),
         " / ".join(f"{by(e, last, k)['estimate']:.2f}"
                    for k in ("auroc_shipped", "auroc_study", "auroc_new"))]
        for m, e in methods.items()])
    budget = result["budget"]
    contamination = table(
        ["method", *[f"contamination @{n}" for n in sizes],
         *[f"- random @{n}" for n in sizes]], [
            [m, *[f"{by(e, n, 'contamination')['estimate']:.3f}" for n in sizes],
             *[cell(by(e, n, "vs_random", "contamination")) for n in sizes]]
            for m, e in methods.items()])
    pairs = list(result["settling"])
    settled = table(["utility", *[f"Spearman {p}" for p in pairs]], [
        [m, *[f"{result['settling'][p][m]:+.2f}" for p in pairs]]
        for m in result["settling"][pairs[0]]]) if pairs else ""
    checked = result.get("length_check", {})
    length = table(["utility", *[f"with length @{n}" for n in sizes],
                    f"AUROC within length quartiles @{last}"], [
        [m, *[f"{checked[size_key(checked, n)][m]['spearman_with_length']:+.2f}" for n in sizes],
         " / ".join(f"{v:.2f}" for v in
                    checked[size_key(checked, last)][m]["auroc_within_length_quartiles"])]
        for m in checked[size_key(checked, last)]]) if checked else ""
    return (f"{vs_random}\n{vs_ifd}\nContamination at {budget:g} (lower is better):\n\n"
            f"{contamination}\n{settled}\n{length}")


def size_key(by_size: dict, n: int):
    return n if n in by_size else str(n)  # str: read back from JSON


def interval_cell(i: dict) -> str:
    return f"{i['estimate']:.3f} [{i['low']:.3f}, {i['high']:.3f}]"


def cell(i: dict | None, digits: int = 3) -> str:
    """A signed difference with its interval, `*` where the interval excludes zero."""
    if i is None:
        return "-"
    star = "*" if i["low"] > 0 or i["high"] < 0 else ""
    return f"{i['estimate']:+.{digits}f} [{i['low']:+.{digits}f}, {i['high']:+.{digits}f}]{star}"


def verdict(i: dict | None) -> str:
    if i is None:
        return "-"
    word = "rises" if i["low"] > 0 else "falls" if i["high"] < 0 else "no trend"
    return f"{word} ({cell(i)})"


def plot(result: dict, path: Path) -> None:
    sizes = result["sizes"]
    series = {m: [e["by_size"][size_key(e["by_size"], n)]["vs_random"]["auroc"] for n in sizes]
              for m, e in result["methods"].items() if m != "random"}
    plot_by_size(series, sizes, path, "AUROC - 0.5 (random)",
                 "Noise benchmark: each method against random, by pool size")


def plot_by_size(series: dict[str, list[dict]], sizes: list[int], path: Path, ylabel: str,
                 title: str) -> None:
    """Each method's interval at each pool size, on a log axis (also trend_finetune.py's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (method, d) in enumerate(series.items()):
        x = np.array(sizes) * (1 + 0.012 * (k - len(series) / 2))
        est = np.array([i["estimate"] for i in d])
        err = np.array([[i["estimate"] - i["low"] for i in d],
                        [i["high"] - i["estimate"] for i in d]])
        ax.errorbar(x, est, yerr=err, marker="o", capsize=3, label=method)
    ax.axhline(0, color="grey", linestyle="--")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes], minor=False)
    ax.minorticks_off()
    ax.set(xlabel="pool size (records)", ylabel=ylabel, title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    args = parser.parse_args()
    result = study(args.directory, args.resamples)
    (args.directory / "trend.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.directory / "trend.md").write_text(markdown(result))
    plot(result, args.directory / "trend-noise.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
