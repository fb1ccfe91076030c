"""A benchmark's page, from its output directory alone: results.json, its run record, and the
files they name (the noise benchmark's tables and labels, the fine-tune benchmark's runs).

One adapter per benchmark turns its results into sections; they read what they know and
render the rest generically (`result_tables`: every measure, an interval as estimate [low,
high]), so a results file with more keys than these adapters know still shows them all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import GradfilterError
from ..outputs import run_record_path
from . import REPORT_NAME, plots
from .measures import histogram
from .page import Html, Page, details, facts, figure, grid, json_block, paragraph, table, write_page
from .selection import read_json

CURVE_BUDGETS = tuple(round(0.01 * k, 2) for k in range(1, 51))


def results_file(path: Path) -> Path | None:
    """A benchmark's results.json: `path` itself (a .json file) or the one inside `path` (an
    output directory); None for anything else (a statistics table)."""
    path = Path(path)
    if path.is_dir() and (path / "results.json").is_file():
        return path / "results.json"
    if path.suffix == ".json" and path.is_file():
        return path
    return None


def write_benchmark_report(results: Path, out: Path | None = None) -> Path:
    """The page of a benchmark (`results`: its output directory, or its results.json),
    written to `out` (default: report.html beside the results)."""
    results = Path(results)
    results_path = results / "results.json" if results.is_dir() else results
    return write_page(Path(out) if out is not None else results_path.parent / REPORT_NAME,
                      benchmark_page(results_path))


def benchmark_page(results_path: Path) -> Page:
    """The page of the results at `results_path`; the files they name are found relative to
    its directory."""
    out_dir = results_path.parent
    results = read_json(results_path)
    if results is None:
        raise GradfilterError(f"{results_path}: no benchmark results here (a JSON object "
                              "written by gradfilter bench)")
    record = read_json(run_record_path(results_path)) or {}
    kind = benchmark_kind(results, record)
    page = ADAPTERS[kind](results, record, out_dir)
    page.add("files", "Files", _files(out_dir, results, record))
    page.footer = [f"Built by gradfilter report from {results_path} and the files it names. "
                   "No script and no request: the page works offline, from file://."]
    return page


def benchmark_kind(results: dict, record: dict) -> str:
    stage = str(record.get("stage", ""))
    for kind in ADAPTERS:
        if stage == f"bench {kind}" or results.get("benchmark") == kind:
            return kind
    if "corrupt_fraction" in results:
        return "noise"
    if "finetune" in results:
        return "finetune"
    raise GradfilterError("results.json: not the results of bench noise, finetune or judge")


# --- generic rendering -----------------------------------------------------------------------

def is_interval(value: object) -> bool:
    return isinstance(value, dict) and {"estimate", "low", "high"} <= value.keys()


def interval_text(value: dict, signed: bool = False) -> str:
    """estimate [low, high], `*` where a difference's interval excludes zero."""
    parts = [value.get("estimate"), value.get("low"), value.get("high")]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in parts):
        return "n/a"
    spec = "+.4g" if signed else ".4g"
    star = " *" if signed and (parts[1] > 0 or parts[2] < 0) else ""
    return f"{parts[0]:{spec}} [{parts[1]:{spec}}, {parts[2]:{spec}}]{star}"


def _plain(value: object, signed: bool = False) -> object:
    if is_interval(value):
        return Html(interval_text(value, signed))  # type: ignore[arg-type]
    if isinstance(value, dict | list):
        return None
    return "n/a" if value is None else value


def result_tables(rows: dict[str, dict], name: str, caption: str = "") -> list[Html]:
    """Rows of measures as tables: the row's own measures in one, each nested group (the
    differences to random, per budget, ...) in another; intervals as estimate [low, high],
    a difference's marked * where its interval excludes zero."""
    rows = {key: value for key, value in rows.items() if isinstance(value, dict)}
    own = _columns(rows, lambda v: not isinstance(v, dict | list) or is_interval(v))
    tables = []
    if own:
        tables.append(table([name, *own],
                            [[row, *[_plain(rows[row].get(c), _is_difference(c)) for c in own]]
                             for row in rows], caption=caption or None))
    nested = _columns(rows, lambda v: isinstance(v, dict) and not is_interval(v))
    for group in nested:
        inner = {row: rows[row].get(group) or {} for row in rows}
        columns = _columns(inner, lambda v: not isinstance(v, dict | list) or is_interval(v))
        if not columns:
            continue
        signed = _is_difference(group)
        tables.append(table([name, *columns],
                            [[row, *[_plain(inner[row].get(c), signed or _is_difference(c))
                                     for c in columns]]
                             for row in inner], caption=group.replace("_", " ")))
    return tables


def _is_difference(key: str) -> bool:
    """A measure that is a difference between two methods (its sign says which is ahead)."""
    return key.startswith("vs_") or "_vs_" in key or "difference" in key


def _columns(rows: dict[str, dict], keep: Callable[[object], bool]) -> list[str]:
    seen: dict[str, None] = {}
    for value in rows.values():
        for key, item in value.items():
            if keep(item):
                seen.setdefault(key, None)
    return list(seen)


def _files(out_dir: Path, results: dict, record: dict) -> Html:
    names = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    return Html(facts([("directory", str(out_dir)), ("files", ", ".join(names))])
                + details("results.json", json_block(results, limit=30_000))
                + (details("its run record", json_block(record)) if record else ""))


# --- noise -----------------------------------------------------------------------------------

def noise_page(results: dict, record: dict, out_dir: Path) -> Page:
    config = results.get("config") or {}
    seeds = [str(s) for s in results.get("corrupt_seeds", [])]
    page = Page(f"Noise benchmark: {results.get('data', '')}",
                lead=f"{results.get('corrupt_fraction', '?')} of the records corrupted "
                     f"({', '.join(results.get('corruptions', []))}); every method's ranking "
                     "measured against the labels, with 95% intervals.")
    draws = results.get("seeds") or {}
    scale = [(f"seed {s}", _scale(draws.get(s) or {})) for s in seeds]
    page.add("run", "What was run", facts([
        ("data", results.get("data")), ("proxy", config.get("proxy")),
        ("members / epochs", f"{config.get('members')} / {config.get('epochs')}"),
        ("budgets", ", ".join(map(str, results.get("budgets", [])))),
        ("bootstrap resamples", results.get("resamples")), *scale]))
    page.add("summary", "Every method, with 95% intervals",
             paragraph("AUROC: clean records scored above corrupted ones (0.5 is chance). "
                       "AUPRC: corrupted found at the bottom. Contamination: the corrupted "
                       "share of what is kept at a budget (lower is better). Differences marked "
                       "* exclude zero.", "note"),
             *result_tables(results.get("summary") or {}, "method"))
    first = draws.get(seeds[0]) if seeds else None
    page.add("contamination", "Contamination by budget", *_contamination(results, first,
                                                                         out_dir))
    if first:
        by_kind = {m: {"auroc " + k: v for k, v in (e.get("auroc_by_type") or {}).items()}
                   for m, e in (first.get("methods") or {}).items()}
        page.add("kinds", f"By corruption kind (seed {seeds[0]})",
                 *result_tables(by_kind, "method"))
        if first.get("diversity"):
            diversity = first["diversity"]
            page.add("diversity", "Near-duplicate removal against plain top-k",
                     paragraph(f"dedup at cosine >= {diversity.get('threshold')}", "note"),
                     *result_tables(diversity.get("methods") or {}, "method"))
    return page


def _scale(draw: dict) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in (draw.get("corrupted_by_type") or {}).items())
    return (f"{draw.get('records')} scored records ({draw.get('unscorable')} unscorable), "
            f"{draw.get('corrupted')} corrupted ({kinds})")


def _contamination(results: dict, first: dict | None, out_dir: Path) -> list[Html]:
    """The summary's contamination at each budget with its interval, and where the tables and
    labels are at hand, every method's curve from 1% to 50% and its scores by label."""
    budgets = [str(b) for b in results.get("budgets", [])]
    series = []
    for method, entry in (results.get("summary") or {}).items():
        points = [entry.get(f"contamination@{b}") for b in budgets]
        if points and all(is_interval(p) for p in points):
            series.append(plots.Series(method, [float(b) for b in budgets],
                                       [p["estimate"] for p in points],
                                       [p["low"] for p in points], [p["high"] for p in points],
                                       errorbars=True))
    rate = float(results.get("corrupt_fraction") or math.nan)
    if first and first.get("records"):
        rate = first.get("corrupted", 0) / first["records"]
    panels = [plots.Panel("at the reported budgets (95% intervals)", "kept", "corrupted share",
                          series, (rate, "random (expected)"), True, True)]
    loaded = _noise_scores(first, out_dir) if first else None
    parts: list[Html] = []
    if loaded is not None:
        scores, labels = loaded
        curves = [plots.Series(m, CURVE_BUDGETS, _curve(s, labels)) for m, s in scores.items()]
        panels.append(plots.Panel("1% to 50% (first seed)", "kept", "corrupted share", curves,
                                  (rate, "random (expected)"), True, True))
    if series or len(panels) > 1:
        parts.append(figure(plots.lines_figure(panels), "Contamination against budget",
                            "The corrupted share of the records each method keeps; random "
                            "keeps the corruption rate on average.",
                            figure_id="contamination-plot"))
    if loaded is not None:
        scores, labels = loaded
        corrupted = labels != ""
        parts.append(Html("<h3>Scores of clean and corrupted records (first seed)</h3>"))
        parts.append(grid(figure(plots.histogram_figure(
            histogram(s, {"clean": ~corrupted, "corrupted": corrupted}), m, m, share=True),
            f"Histogram of {m} by label") for m, s in scores.items()))
    else:
        parts.append(paragraph("The curves and score histograms need the run's tables and "
                               "labels, which are not at hand.", "note"))
    return parts


def _noise_scores(draw: dict, out_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """Every method's scores and the labels of one draw's scored records, read from the files
    results.json names (None where one is missing)."""
    import pyarrow.parquet as pq

    from ..table import load_scores, load_stats

    tables = draw.get("tables") or {}
    labels_path = out_dir / str(draw.get("labels", ""))
    paths = {m: _recorded(out_dir, p) for m, p in tables.items()}
    if not tables or not labels_path.is_file() or not all(p.is_file() for p in paths.values()):
        return None
    kinds = pq.ParquetFile(labels_path).read(["corruption"]).column(0).to_pylist()
    scored = np.ones(len(kinds), dtype=bool)
    for path in set(paths.values()):
        reasons = load_stats(path, ["skip_reason"]).column(0)
        scored &= np.asarray(reasons.is_null().to_numpy(zero_copy_only=False))
    scores = {m: load_scores(p, m)[scored] for m, p in paths.items()}
    labels = np.array([k or "" for k in kinds], dtype=object)[scored]
    return scores, labels


def _recorded(out_dir: Path, recorded: str) -> Path:
    inside = out_dir / recorded
    return inside if inside.exists() else Path(recorded)


def _curve(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    from ..selection import select_top

    corrupted = labels != ""
    shares = []
    for budget in CURVE_BUDGETS:
        kept = select_top(scores, ratio=budget).indices
        shares.append(float(corrupted[kept].mean()) if len(kept) else math.nan)
    return shares


# --- fine-tune -------------------------------------------------------------------------------

def finetune_page(results: dict, record: dict, out_dir: Path) -> Page:
    pool, counts = results.get("pool") or {}, results.get("records") or {}
    config, target = results.get("finetune") or {}, results.get("target") or {}
    page = Page(f"Fine-tune benchmark: {pool.get('data', '') if isinstance(pool, dict) else ''}",
                lead="A target fine-tuned on each method's subset with the same steps; its "
                     "held-out loss (lower is better), with 95% intervals.")
    page.add("run", "What was run", facts([
        ("pool", json.dumps(pool, default=str) if isinstance(pool, dict) else pool),
        ("records", ", ".join(f"{k} {v}" for k, v in counts.items())),
        ("target", target.get("proxy")), ("max length", target.get("max_length")),
        ("training", ", ".join(f"{k} {v}" for k, v in config.items())),
        ("budgets", ", ".join(map(str, results.get("budgets", [])))),
        ("methods", ", ".join(map(str, results.get("methods", []))))]))
    parts: list[Html] = [paragraph("Differences are paired (same seeds, same held-out "
                                   "examples); * marks an interval that excludes zero.", "note")]
    for budget, rows in (results.get("results") or {}).items():
        parts.append(Html(f"<h3>Budget {_percent(budget)}</h3>"))
        parts += result_tables(rows if isinstance(rows, dict) else {}, "subset")
    page.add("results", "Held-out loss by subset", *parts)
    curves = results.get("curves") or {}
    if curves:
        page.add("curves", "Held-out loss curves",
                 figure(plots.lines_figure(_loss_panels(results, curves, out_dir)),
                        "Held-out loss against optimiser steps",
                        "Mean over seeds and held-out examples; the band spans the seeds' "
                        "means where the per-run curves are at hand.", figure_id="curves-plot"))
    return page


def _percent(budget: object) -> str:
    try:
        return f"{float(str(budget)):.0%}"
    except ValueError:
        return str(budget)


def _loss_panels(results: dict, curves: dict, out_dir: Path) -> list[plots.Panel]:
    panels = []
    for budget in results.get("budgets") or [""]:
        series = []
        for name, curve in curves.items():
            if "@" in name and not name.endswith(f"@{budget}"):
                continue
            steps, mean = curve.get("eval_steps"), curve.get("eval_loss_mean")
            if not steps or not mean or len(steps) != len(mean):
                continue
            low, high = _seed_band(name, curve, out_dir)
            series.append(plots.Series(name.split("@")[0], steps, mean, low, high,
                                       dashed="@" not in name))
        panels.append(plots.Panel(f"budget {_percent(budget)}", "optimiser step",
                                  "held-out loss", series))
    return panels


def _seed_band(name: str, curve: dict, out_dir: Path) -> tuple[list | None, list | None]:
    """The lowest and highest seed's mean held-out loss at each evaluation: from the curve's
    own per-seed means where results.json holds them, else from the run's file under runs/
    whose mean is the curve's (a run directory may hold older runs of the same name)."""
    per_seed = curve.get("eval_loss_by_seed")
    if per_seed is None:
        per_seed = _run_file_seeds(name, curve, out_dir / "runs")
    if per_seed is None:
        return None, None
    values = np.asarray(per_seed, dtype=np.float64)  # [points, seeds]
    return values.min(axis=1).tolist(), values.max(axis=1).tolist()


def _run_file_seeds(name: str, curve: dict, runs: Path) -> list | None:
    mean = np.asarray(curve["eval_loss_mean"], dtype=np.float64)
    for path in sorted(runs.glob(f"{name}-*.json")) if runs.is_dir() else []:
        stored = read_json(path)
        if not stored or "eval_loss" not in stored:
            continue
        losses = np.asarray(stored["eval_loss"], dtype=np.float64)  # [points, seeds, examples]
        if losses.ndim == 3 and losses.shape[0] == len(mean):
            per_seed = losses.mean(axis=2)
            if np.allclose(per_seed.mean(axis=1), mean, rtol=1e-9, atol=1e-9):
                return per_seed.tolist()
    return None


# --- judge -----------------------------------------------------------------------------------

def judge_page(results: dict, record: dict, out_dir: Path) -> Page:
    judge = results.get("judge") or {}
    sets = results.get("test_sets") or {}
    page = Page("LLM-judge benchmark",
                lead=f"Judge {judge.get('model')} compares every pair's answers in both orders; "
                     "winning score = (wins - losses) / judged + 1 (1 is even), with its 95% "
                     "bootstrap interval over prompts.")
    page.add("run", "What was run", facts([
        ("judge", f"{judge.get('model')} at {judge.get('url')} (prompt "
                  f"{judge.get('template')})"),
        ("models", ", ".join(f"{k}: {v}" for k, v in (results.get("models") or {}).items())),
        ("test sets", ", ".join(f"{k} ({v.get('prompts')} prompts)" for k, v in sets.items()
                                if isinstance(v, dict))),
        ("generation", json.dumps(results.get("generation"), default=str)),
        ("seed", results.get("seed")), ("run", json.dumps(results.get("run"), default=str))]))
    rows, bars = [], []
    for pair in results.get("pairs") or []:
        a, b = pair.get("a"), pair.get("b")
        named = [*(pair.get("test_sets") or {}).items(), ("pooled", pair.get("pooled") or {})]
        for test_set, s in named:
            bars.append((f"{a} vs {b}: {test_set}", s.get("wins", 0), s.get("ties", 0),
                         s.get("losses", 0)))
            score = s.get("winning_score") or {}
            rows.append([f"{a} vs {b}", test_set, s.get("wins"), s.get("ties"),
                         s.get("losses"), s.get("unparsed"),
                         Html(interval_text(score)) if is_interval(score) else "n/a",
                         _reading(score, a, b)])
    parts: list[Html] = []
    if bars:
        parts.append(figure(plots.outcome_bars(bars, "wins, ties and losses of A against B"),
                            "Win, tie and lose bars per pair and test set",
                            "Shares of the judged prompts; counts in the bars.",
                            figure_id="outcomes-plot"))
    parts.append(table(["pair (A vs B)", "test set", "wins", "ties", "losses", "unparsed",
                        "winning score [95% CI]", "reading"], rows, table_id="pairs"))
    page.add("pairs", "Every pair", *parts)
    unparsed = [(pair, u) for pair in results.get("pairs") or [] for u in
                pair.get("unparsed") or []]
    if unparsed:
        page.add("unparsed", f"Unparsed judge replies ({len(unparsed)})",
                 *[details(f"{p.get('a')} vs {p.get('b')}, {u.get('prompt_id')}",
                           json_block(u, limit=2000)) for p, u in unparsed[:50]])
    return page


def _reading(score: dict, a: object, b: object) -> str:
    """Better only where the interval excludes 1 (even)."""
    low, high = score.get("low"), score.get("high")
    if isinstance(low, int | float) and math.isfinite(low) and low > 1:
        return f"{a} better"
    if isinstance(high, int | float) and math.isfinite(high) and high < 1:
        return f"{b} better"
    return "tied"


ADAPTERS: dict[str, Callable[[dict, dict, Path], Page]] = {
    "noise": noise_page, "finetune": finetune_page, "judge": judge_page}
