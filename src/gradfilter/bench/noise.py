"""The noise benchmark of evaluation.md §1: corrupt a known part of the data, score the mixed
set with every method, and measure how much corruption each method keeps.

Corruptions (`corruptions.py`) act on every assistant turn that answers a prompt (the turns that
carry loss); they are registered by name, so users can add their own with `register_corruption`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ScoreConfig, config_key
from ..data.conversations import Turn, answering_turns
from ..diversity import DEFAULT_THRESHOLD, dedup
from ..errors import GradfilterError
from ..outputs import atomic_path, atomic_write_text, write_run_record
from ..selection import select_top
from ..table import load_sketch_features, utility_scores
from ..utilities import UTILITIES
from .corruptions import (  # noqa: F401  (register_corruption, CorruptionContext: plugin API)
    CORRUPTIONS,
    CorruptionContext,
    corrupt,
    corrupted_count,
    register_corruption,
)
from .intervals import (
    RESAMPLES,
    Ranking,
    auroc,
    bootstrap,
    percentile_interval,
    resample_weights,
    t_interval,
)

CURVE_BUDGETS = tuple(round(0.01 * k, 2) for k in range(1, 51))


def messages_jsonl(conversations: list[list[Turn]]) -> str:
    """Conversations as OpenAI `messages` JSONL, one per line, in order."""
    return "".join(json.dumps({"messages": [{"role": t.role, "content": t.text} for t in turns]},
                              ensure_ascii=False) + "\n" for turns in conversations)


def write_messages(path: Path, conversations: list[list[Turn]]) -> None:
    """The mixed set as OpenAI `messages` JSONL."""
    atomic_write_text(path, messages_jsonl(conversations))


def contamination(scores: np.ndarray, labels: np.ndarray, budget: float) -> dict[str, float]:
    """Share of the records selected at `budget` that are corrupted: overall ("all") and per
    kind. `labels` holds the kind, or "" where clean."""
    picked = labels[select_top(scores, ratio=budget).indices]
    kinds = sorted(set(labels) - {""})
    if len(picked) == 0:
        return {"all": float("nan"), **dict.fromkeys(kinds, float("nan"))}
    return {"all": float((picked != "").mean()), **{k: float((picked == k).mean()) for k in kinds}}


def method_metrics(all_scores: dict[str, np.ndarray], labels: Sequence[str | None],
                   budgets: Sequence[float], resamples: int = RESAMPLES,
                   seed: int = 0) -> dict[str, dict]:
    """Every method's AUROC (clean above corrupted), AUPRC (corrupted found at the bottom) and
    contamination per budget, each with its 95% interval from one paired bootstrap over the
    records (the same resamples for every method); the differences to `random` and `ifd`
    (when they are among the methods) with their intervals; per kind, the point estimates."""
    labels_arr = np.array([label or "" for label in labels])
    clean, corrupted = labels_arr == "", labels_arr != ""
    keys = [f"{b:g}" for b in budgets]
    rankings = {m: Ranking(s) for m, s in all_scores.items()}
    bottom = {m: Ranking(-np.where(np.isfinite(s), s, -np.inf)) for m, s in all_scores.items()}

    def measures(weights: np.ndarray | None) -> dict[str, np.ndarray]:
        return {m: np.array([rankings[m].auroc(clean, weights),
                             bottom[m].auprc(corrupted, weights),
                             *[rankings[m].top_share(corrupted, b, weights) for b in budgets]])
                for m in all_scores}

    estimate = measures(None)
    draws = [measures(w) for w in resample_weights(len(labels_arr), resamples, seed)]
    names = ["auroc", "auprc", *[f"contamination@{k}" for k in keys]]
    result = {}
    for m, scores in all_scores.items():
        values = np.array([d[m] for d in draws])
        entry = _intervals(names, estimate[m], values)
        for reference in ("random", "ifd"):
            if reference in all_scores and reference != m:
                diff = values - np.array([d[reference] for d in draws])
                entry[f"vs_{reference}"] = _intervals(names, estimate[m] - estimate[reference],
                                                      diff)
        entry.update(_by_kind(rankings[m], scores, labels_arr, budgets, keys))
        result[m] = entry
    return result


def _intervals(names: list[str], estimate: np.ndarray, draws: np.ndarray) -> dict[str, dict]:
    return {name: percentile_interval(estimate[k], draws[:, k]).as_dict()
            for k, name in enumerate(names)}


def _by_kind(ranking: Ranking, scores: np.ndarray, labels: np.ndarray,
             budgets: Sequence[float], keys: list[str]) -> dict:
    clean = labels == ""
    kinds = sorted(set(labels) - {""})
    return {
        "auroc_by_type": {k: auroc(scores[clean | (labels == k)],
                                   clean[clean | (labels == k)]) for k in kinds},
        "contamination_by_type": {key: {k: ranking.top_share(labels == k, b) for k in kinds}
                                  for key, b in zip(keys, budgets, strict=True)},
        "selected": {key: len(select_top(scores, ratio=b).indices)
                     for key, b in zip(keys, budgets, strict=True)},
    }


def diversity_metrics(scores: np.ndarray, labels: Sequence[str | None],
                      budgets: Sequence[float], load, threshold: float) -> dict:
    """What dedup does to one method's selection at each budget: contamination (overall and
    per kind) of plain top-k and of dedup, the paired difference with its 95% bootstrap
    interval, and how many records dedup removed (with its largest groups).

    The interval resamples records with the two selections held fixed (a record drawn twice
    counts twice in both): re-running dedup on a resample would see the drawn copies as
    near-duplicates of each other."""
    labels_arr = np.array([label or "" for label in labels])
    corrupted = labels_arr != ""
    kinds = sorted(set(labels_arr) - {""})
    result: dict = {"plain": {}, "dedup": {}, "dedup_by_type": {}, "difference": {},
                    "removed": {}, "groups": {}}
    for budget in budgets:
        key = f"{budget:g}"
        plain = select_top(scores, ratio=budget)
        diverse, report = dedup(plain, load, threshold)
        in_plain = np.zeros(len(scores), bool)
        in_plain[plain.indices] = True
        in_dedup = np.zeros(len(scores), bool)
        in_dedup[diverse.indices] = True

        def difference(idx: np.ndarray, a=in_dedup, b=in_plain) -> float:
            return _share(corrupted[idx], a[idx]) - _share(corrupted[idx], b[idx])

        result["plain"][key] = _share(corrupted, in_plain)
        result["dedup"][key] = _share(corrupted, in_dedup)
        result["dedup_by_type"][key] = {k: _share(labels_arr == k, in_dedup) for k in kinds}
        result["difference"][key] = bootstrap(difference, [len(scores)]).as_dict()
        result["removed"][key] = report.removed
        result["groups"][key] = report.groups[:3]
    return result


def _share(flag: np.ndarray, chosen: np.ndarray) -> float:
    """Share of the chosen records that carry `flag` (NaN if none is chosen)."""
    return float(flag[chosen].mean()) if chosen.any() else float("nan")


def method_groups(methods: Sequence[str]) -> dict[str, list[str]]:
    """Which scoring run serves each method: one ensemble run serves every G-SNR utility (and
    `loss`, the ensemble's late loss, when it runs); one IFD run serves perplexity too."""
    groups: dict[str, list[str]] = {}
    ensemble = any(m in UTILITIES and m != "loss" for m in methods)
    for method in methods:
        if method in UTILITIES and (method != "loss" or ensemble):
            run = "gsnr"
        elif method in ("ifd", "perplexity"):
            run = "ifd" if "ifd" in methods else "perplexity"
        elif method in ("length", "random", "loss"):
            run = method
        else:
            raise GradfilterError(f"unknown method {method!r}")
        groups.setdefault(run, []).append(method)
    return groups


def scores_path(out_dir: Path, run: str, config: ScoreConfig, data_sha256: str) -> Path:
    """A name that changes whenever anything that affects the scores changes, so a rerun with
    the same arguments finds (and reuses) the finished table."""
    key = json.dumps({"run": run, "config": config_key(config), "data": data_sha256},
                     sort_keys=True)
    return out_dir / "scores" / f"{run}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.parquet"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def labels_table(source_index: np.ndarray, labels: Sequence[str | None]) -> pa.Table:
    return pa.table({"index": pa.array(np.arange(len(labels), dtype=np.int64)),
                     "source_index": pa.array(source_index.astype(np.int64)),
                     "corruption": pa.array(list(labels), type=pa.string())})


def write_labels(path: Path, source_index: np.ndarray, labels: Sequence[str | None]) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(labels_table(source_index, labels), tmp)


def results_markdown(results: dict) -> str:
    """The human-readable report: the headline table with intervals and which differences
    exclude zero, then per corruption kind."""
    budgets = results["budgets"]
    summary = results["summary"]
    head = ["method", "AUROC", "AUPRC", *[f"contam. @{float(b):.0%}" for b in budgets],
            "beats random", "beats IFD"]
    seeds = results["corrupt_seeds"]
    first = results["seeds"][str(seeds[0])]
    lines = [f"# Noise benchmark: {results['data']}", "", _scale_line(results), "",
             "AUROC: clean records scored above corrupted ones (0.5 is chance). AUPRC: "
             "corrupted records found at the bottom of the ranking (random: the corruption "
             "rate). Contamination: share of corrupted records among those kept at each budget "
             "(lower is better; random: the corruption rate). Brackets: 95% interval, " +
             ("a paired bootstrap over records." if len(seeds) == 1 else
              f"Student's t over {len(seeds)} corruption seeds.") +
             " A method beats random or IFD on a measure only where the interval of the "
             "difference excludes zero; the columns name those measures.", "",
             _row(head), _row(["---"] * len(head))]
    for method, m in summary.items():
        lines.append(_row([method, _cell(m["auroc"]), _cell(m["auprc"]),
                           *[_cell(m[f"contamination@{b}"]) for b in budgets],
                           _beats(m.get("vs_random")), _beats(m.get("vs_ifd"))]))
    kinds = results["corruptions"]
    middle = budgets[len(budgets) // 2]
    lines += ["", f"## By corruption kind (seed {seeds[0]}: AUROC clean vs that kind; "
                  f"share of that kind among the kept at {float(middle):.0%})", "",
              _row(["method", *kinds]), _row(["---"] * (len(kinds) + 1))]
    for method, m in first["methods"].items():
        lines.append(_row([method, *[f"{m['auroc_by_type'][k]:.3f} / "
                                     f"{m['contamination_by_type'][middle][k]:.3f}"
                                     for k in kinds]]))
    if "diversity" in first:
        lines += diversity_markdown(first["diversity"], budgets, seeds[0])
    return "\n".join(lines) + "\n"


def diversity_markdown(diversity: dict, budgets: Sequence[str], seed: int) -> list[str]:
    """Plain top-k against dedup, per method and budget, the difference with its interval."""
    lines = ["", f"## Diversity: dedup at cosine >= {diversity['threshold']:g} (seed {seed})",
             "", "Contamination of plain top-k and of the same utility with near-duplicates "
             "removed; the difference (dedup - plain) with its 95% bootstrap interval over "
             "records (selections held fixed); records removed.", "",
             _row(["method", "budget", "plain", "dedup", "difference [95% CI]", "removed"]),
             _row(["---"] * 6)]
    for method, m in diversity["methods"].items():
        for b in budgets:
            d = m["difference"][b]
            lines.append(_row([method, b, f"{m['plain'][b]:.3f}", f"{m['dedup'][b]:.3f}",
                               f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
                               str(m["removed"][b])]))
    return lines


def _scale_line(results: dict) -> str:
    parts = []
    for seed in results["corrupt_seeds"]:
        r = results["seeds"][str(seed)]
        kinds = ", ".join(f"{k} {n}" for k, n in r["corrupted_by_type"].items())
        parts.append(f"seed {seed}: {r['records']} scored records ({r['unscorable']} more "
                     f"could not be scored and are left out), {r['corrupted']} corrupted "
                     f"({kinds})")
    return "; ".join(parts) + "."


def _cell(interval: dict) -> str:
    return f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _beats(differences: dict | None) -> str:
    """The measures on which the method is better than the reference, the interval of the
    difference excluding zero (higher AUROC and AUPRC, lower contamination); `worse: ...` where
    it excludes zero the other way."""
    if differences is None:
        return "-"
    better, worse = [], []
    for name, d in differences.items():
        sign = -1 if name.startswith("contamination") else 1
        label = name.replace("contamination@", "")
        if d["low"] > 0 or d["high"] < 0:  # the interval excludes zero
            (better if (d["low"] > 0) == (sign > 0) else worse).append(label)
    text = ", ".join(better) or "no"
    return text + (f"; worse: {', '.join(worse)}" if worse else "")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def plot_contamination(path: Path, curves: dict[str, dict[str, float]], rate: float) -> None:
    """Contamination against budget, one line per method, random's expectation dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, curve in curves.items():
        ax.plot([100 * float(b) for b in curve], list(curve.values()), label=method)
    ax.axhline(rate, color="grey", linestyle="--", label="corruption rate")
    ax.set(xlabel="budget (% of records kept)", ylabel="contamination (corrupted / kept)",
           title="Contamination of the selected subset")
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


def plot_distributions(path: Path, scores: dict[str, np.ndarray],
                       labels: Sequence[str | None]) -> None:
    """Each method's score histogram, clean against each corruption (1st-99th percentile)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({label for label in labels if label})
    labels_arr = np.array([label or "" for label in labels])
    cols = 3
    rows = -(-len(scores) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (method, values) in zip(axes.flat, scores.items(), strict=False):
        finite = np.isfinite(values)
        if not finite.any():
            ax.set_title(f"{method} (no finite score)")
            continue
        lo, hi = np.percentile(values[finite], [1, 99])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        for group in ["", *kinds]:
            chosen = finite & (labels_arr == group)
            ax.hist(np.clip(values[chosen], lo, hi), bins=bins, histtype="step", density=True,
                    label=group or "clean")
        ax.set_title(method)
    for ax in list(axes.flat)[len(scores):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Score distributions: clean vs corrupted")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def recorded_path(path: Path, out_dir: Path) -> str:
    """How results.json records a table: relative to the run directory where it lies inside it
    (as the mixed set and labels are), so the directory can be moved or copied whole; else as
    given."""
    try:
        return str(path.resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return str(path)


def run_table(run_dir: Path, recorded: str) -> Path:
    """The table results.json records: relative to the run directory, else as recorded (an
    absolute path, or one relative to where the run was made, as earlier versions wrote)."""
    inside = run_dir / recorded
    return inside if inside.exists() else Path(recorded)


def run_noise_benchmark(data, out_dir: Path, config: ScoreConfig, *, methods: Sequence[str],
                        corruptions: Sequence[str], fraction: float, budgets: Sequence[float],
                        corrupt_seeds: Sequence[int] = (0,),
                        tables: dict[str, Path] | None = None, resamples: int = RESAMPLES,
                        progress: bool = True, log=print, diversity: str = "none",
                        diversity_threshold: float = DEFAULT_THRESHOLD,
                        allow_data_mismatch: bool = False) -> dict:
    """Corrupt (once per corruption seed), score with every method (reusing finished tables,
    or the `tables` given by run name), measure with intervals, report. With
    `diversity="dedup"`, also each method's selection with near-duplicates removed (by the
    G-SNR run's sketches) against its plain top-k. A table reused or given must have been
    scored on the mixed set (`binding`), unless `allow_data_mismatch`."""
    from ..data.dataset import as_dataset
    from ..scoring.proxy import load_tokenizer

    if tables and len(corrupt_seeds) != 1:
        raise GradfilterError("--table applies to one corruption seed (its mixed set)")
    dataset = as_dataset(data)
    conversations, source = _answered(dataset, log)
    tokenizer = load_tokenizer(config.proxy)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in corrupt_seeds:
        mixed, labels = corrupt(conversations, fraction, corruptions, seed, tokenizer)
        unchanged = corrupted_count(fraction, len(conversations)) - sum(map(bool, labels))
        if unchanged:
            log(f"corruption seed {seed}: {unchanged} drawn record(s) came back unchanged from "
                "their corruption and count as clean")
        runs.append(_run_seed(out_dir, seed, mixed, labels, np.array(source), config, methods,
                              corruptions, budgets, tables or {}, resamples, progress, log,
                              diversity, diversity_threshold, allow_data_mismatch))
    per_seed = {str(seed): run.results for seed, run in zip(corrupt_seeds, runs, strict=True)}
    results = {
        "data": str(dataset.path), "corrupt_fraction": fraction,
        "corruptions": list(corruptions), "budgets": [f"{b:g}" for b in budgets],
        "corrupt_seeds": list(corrupt_seeds), "resamples": resamples,
        "config": asdict(config), "seeds": per_seed,
        "summary": _summary(per_seed),
    }
    _write_reports(out_dir, results, runs[0])
    return results


@dataclass(frozen=True)
class SeedRun:
    """One corruption draw: its results, and the scores and labels of its scored records."""

    results: dict
    scores: dict[str, np.ndarray]
    labels: list[str | None]


def _answered(dataset, log) -> tuple[list[list[Turn]], list[int]]:
    """The conversations that have a response to a prompt, and their record numbers."""
    conversations, source = [], []
    for record in dataset.records:
        try:
            turns = dataset.turns(record)
        except GradfilterError as exc:
            log(f"skipping record {record.index}: {exc}")
            continue
        if answering_turns(turns):
            conversations.append(turns)
            source.append(record.index)
    log(f"{len(conversations)} of {len(dataset.records)} records have a response to a prompt")
    return conversations, source


def _run_seed(out_dir: Path, seed: int, mixed: list[list[Turn]], labels: list[str | None],
              source: np.ndarray, config: ScoreConfig, methods: Sequence[str],
              corruptions: Sequence[str], budgets: Sequence[float], given: dict[str, Path],
              resamples: int, progress: bool, log, diversity: str = "none",
              diversity_threshold: float = DEFAULT_THRESHOLD,
              allow_data_mismatch: bool = False) -> SeedRun:
    """One corruption draw: its mixed set and labels, every method's scores, the metrics."""
    from ..binding import require_table_of
    from ..data.dataset import read_dataset
    from ..scoring.score import score
    from ..table import load_stats

    mixed_path, labels_path = out_dir / f"mixed-s{seed}.jsonl", out_dir / f"labels-s{seed}.parquet"
    write_messages(mixed_path, mixed)
    write_labels(labels_path, source, labels)
    digest = file_sha256(mixed_path)
    all_scores: dict[str, np.ndarray] = {}
    tables: dict[str, str] = {}
    scored = np.ones(len(mixed), dtype=bool)
    for run, members in method_groups(methods).items():
        path = Path(given[run]) if run in given else scores_path(out_dir, run, config, digest)
        if path.is_file():
            log(f"{run}: reusing {path}")
            table = load_stats(path)
            if table.num_rows != len(mixed):
                raise GradfilterError(f"{path}: {table.num_rows} rows, but the mixed set "
                                      f"{mixed_path} has {len(mixed)} records")
            require_table_of(table, path, read_dataset(mixed_path).records, mixed_path,
                             allow_data_mismatch, log)
        else:
            log(f"{run}: scoring {len(mixed)} records (corruption seed {seed})")
            table = score(mixed_path, path, config, method=run, progress=progress)
        scored &= table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
        for method in members:
            all_scores[method] = utility_scores(table, method)
            tables[method] = str(path)
    # Records no method could score (e.g. a prompt longer than max_length) are left out of
    # every metric alike.
    all_scores = {m: s[scored] for m, s in all_scores.items()}
    kept = [label for label, keep in zip(labels, scored, strict=True) if keep]
    corrupted = [label for label in kept if label]
    results = {
        "mixed": mixed_path.name, "labels": labels_path.name,
        "tables": {method: recorded_path(Path(path), out_dir) for method, path in tables.items()},
        "records": len(kept), "unscorable": int((~scored).sum()),
        "corrupted": len(corrupted),
        "corrupted_by_type": {k: corrupted.count(k) for k in corruptions},
        "methods": method_metrics(all_scores, kept, budgets, resamples, seed),
    }
    if diversity == "dedup":
        results["diversity"] = _diversity(all_scores, kept, budgets, tables, methods,
                                          np.flatnonzero(scored), diversity_threshold)
    return SeedRun(results, all_scores, kept)


def _diversity(all_scores: dict[str, np.ndarray], labels: list[str | None],
               budgets: Sequence[float], tables: dict[str, str], methods: Sequence[str],
               rows: np.ndarray, threshold: float) -> dict:
    """dedup against plain top-k for every method, by the sketches of the first G-SNR run."""
    sketched = next((tables[m] for m in methods if m in UTILITIES), None)
    if sketched is None:
        raise GradfilterError("--diversity dedup needs a G-SNR utility among --methods "
                              "(its table holds the sketches)")

    def load(records: np.ndarray) -> np.ndarray:
        return load_sketch_features(sketched, rows[records])

    return {"method": "dedup", "threshold": threshold, "sketches": sketched,
            "methods": {m: diversity_metrics(s, labels, budgets, load, threshold)
                        for m, s in all_scores.items()}}


def _summary(per_seed: dict[str, dict]) -> dict[str, dict]:
    """Per method and measure: the bootstrap interval of a single seed, or Student's t over
    the seeds' estimates (and over the seeds' differences to random and IFD)."""
    runs = list(per_seed.values())
    if len(runs) == 1:
        return {m: {k: v for k, v in entry.items() if not k.endswith("_type") and k != "selected"}
                for m, entry in runs[0]["methods"].items()}
    summary: dict[str, dict] = {}
    for method, first in runs[0]["methods"].items():
        entry: dict = {}
        for name, value in first.items():
            if name.startswith("vs_"):
                entry[name] = {measure: t_interval([r["methods"][method][name][measure]
                                                    ["estimate"] for r in runs]).as_dict()
                               for measure in value}
            elif isinstance(value, dict) and "estimate" in value:
                entry[name] = t_interval([r["methods"][method][name]["estimate"]
                                          for r in runs]).as_dict()
        summary[method] = entry
    return summary


def _write_reports(out_dir: Path, results: dict, shown: SeedRun) -> None:
    """results.json and .md, and the plots of one corruption draw (`shown`)."""
    labels = np.array([label or "" for label in shown.labels])
    curves = {m: {f"{b:g}": contamination(s, labels, b)["all"] for b in CURVE_BUDGETS}
              for m, s in shown.scores.items()}
    plot_contamination(out_dir / "contamination.png", curves, float((labels != "").mean()))
    plot_distributions(out_dir / "distributions.png", shown.scores, shown.labels)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    write_run_record(out_dir / "results.json", {"stage": "bench noise", **{
        k: results[k] for k in ("data", "config", "corrupt_seeds", "corrupt_fraction",
                                "corruptions", "budgets", "resamples")},
        "tables": {seed: run["tables"] for seed, run in results["seeds"].items()}})
