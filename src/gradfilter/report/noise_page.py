"""The noise benchmark's page: what was run, the verdicts against random, IFD and length,
every measure with its interval, contamination by budget (every method's curve and its scores
by label, from the run's own tables and labels where they are at hand), per corruption kind,
and near-duplicate removal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..bench.noise_metrics import contamination
from ..bench.noise_report import (
    COST_HEAD,
    COST_NOTE,
    COST_RUNS_HEAD,
    SHOWN,
    cost_rows,
    cost_runs,
    verdict_cell,
)
from . import plots
from .measures import histogram
from .page import Html, Page, facts, figure, grid, paragraph, table
from .results import interval_or_na, is_interval, percent, result_tables

CURVE_BUDGETS = tuple(round(0.01 * k, 2) for k in range(1, 51))


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
    verdicts = _noise_verdicts(results)
    if verdicts:
        page.add("verdicts", "Verdicts", *verdicts)
    page.add("summary", "Every method, with 95% intervals",
             paragraph("AUROC: clean records scored above corrupted ones (0.5 is chance). "
                       "AUPRC: corrupted found at the bottom. Contamination: the corrupted "
                       "share of what is kept at a budget (lower is better). Differences marked "
                       "* exclude zero.", "note"),
             *result_tables(results.get("summary") or {}, "method"))
    first = draws.get(seeds[0]) if seeds else None
    page.add("contamination", "Contamination by budget", *_contamination(results, first,
                                                                         out_dir))
    kinds = _kind_verdicts(results)
    if kinds:
        page.add("kinds", "By corruption kind", *kinds)
    elif first:
        by_kind = {m: {"auroc " + k: v for k, v in (e.get("auroc_by_type") or {}).items()}
                   for m, e in (first.get("methods") or {}).items()}
        page.add("kinds", f"By corruption kind (seed {seeds[0]})",
                 *result_tables(by_kind, "method"))
    if first and first.get("diversity"):
        diversity = first["diversity"]
        page.add("diversity", "Near-duplicate removal against plain top-k",
                 paragraph(f"dedup at cosine >= {diversity.get('threshold')}", "note"),
                 *result_tables(diversity.get("methods") or {}, "method"))
    cost = first.get("cost") if first else None
    if isinstance(cost, dict) and {"runs", "methods", "full_pool_row_tokens"} <= cost.keys():
        page.add("cost", f"Is selecting worth it? (seed {seeds[0]}; row-tokens)",
                 *_cost(cost, config.get("proxy")))
    return page


def _cost(cost: dict, proxy: object) -> list[Html]:
    """What each scoring run cost, and each method's subsets against the full pool's epoch."""
    return [paragraph(COST_NOTE, "note"),
            paragraph(f"Tokens: {cost.get('tokens')}; proxy {proxy}. One epoch on the full pool "
                      f"({cost.get('full_pool_records')} scored records): "
                      f"{cost['full_pool_row_tokens']:,} forward+backward row-tokens."),
            table(COST_RUNS_HEAD, cost_runs(cost), table_id="cost-runs"),
            table(COST_HEAD, cost_rows(cost), table_id="cost-methods")]


def _noise_verdicts(results: dict) -> list[Html]:
    """Each method's verdicts against random's expectation, IFD and length, the measures named
    by verdict (as results.md's headline table), and random's expectation with its band."""
    summary = {m: e for m, e in (results.get("summary") or {}).items() if isinstance(e, dict)}
    references = [r for r in ("random", *sorted(SHOWN.keys() - {"random"}))
                  if any(r in (e.get("verdicts") or {}) for e in summary.values())]
    if not references:
        return []
    rows = [[method, *[verdict_cell((e.get("verdicts") or {}).get(r)) for r in references]]
            for method, e in summary.items()]
    parts = [paragraph("On each measure, better, tied or worse than the reference by whether "
                       "the 95% interval of the difference (method minus random's expectation, "
                       "or minus the other method, paired) excludes zero; the cells name the "
                       "measures (5%, 10%: contamination at that budget).", "note"),
             table(["method", *[f"vs {SHOWN.get(r, r)}" for r in references]], rows,
                   table_id="verdicts")]
    random = results.get("random") or {}
    expected, bands = random.get("expectation") or {}, random.get("reselections") or {}
    if expected:
        shown = [f"{name} {value:.3f}" + (f" ({bands[name]['low']:.3f}-{bands[name]['high']:.3f})"
                                          if isinstance(bands.get(name), dict) else "")
                 for name, value in expected.items() if isinstance(value, int | float)]
        parts.append(paragraph(f"Random, expected (in parentheses the 2.5-97.5% band of "
                               f"{bands.get('draws', '?')} random orders): "
                               + "; ".join(shown) + ".", "note"))
    return parts


def _kind_verdicts(results: dict) -> list[Html]:
    """Per method and corruption kind: AUROC clean vs that kind with its verdict against
    chance, and that kind's share of the kept records at the middle budget."""
    summary = {m: e for m, e in (results.get("summary") or {}).items()
               if isinstance(e, dict) and e.get("verdicts_by_type")}
    if not summary:
        return []
    budgets = [str(b) for b in results.get("budgets", [])]
    middle = budgets[len(budgets) // 2] if budgets else None
    kinds = sorted({k for e in summary.values() for k in e["verdicts_by_type"]})
    rows = []
    for method, e in summary.items():
        shares = (e.get("contamination_by_type") or {}).get(middle) or {}
        rows.append([method, *[Html(" · ".join(
            part for part in (interval_or_na((e.get("auroc_by_type") or {}).get(kind)),
                              str(e["verdicts_by_type"].get(kind, "n/a")),
                              interval_or_na(shares.get(kind)) if shares else "")
            if part)) for kind in kinds]])
    share = f"; its share of the kept at {percent(middle)}" if middle else ""
    return [paragraph(f"AUROC clean vs that kind, its verdict against chance (0.5){share}; "
                      "95% intervals.", "note"), table(["method", *kinds], rows,
                                                       table_id="kind-verdicts")]


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
        groups = {"clean": labels == "", **{kind: labels == kind
                                           for kind in sorted(set(labels) - {""})}}
        parts.append(Html("<h3>Scores of clean records and of each corruption kind (first "
                          "seed)</h3>"))
        parts.append(grid(figure(plots.histogram_figure(
            histogram(s, groups), m, m, share=True),
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
    return [contamination(scores, labels, budget)["all"] for budget in CURVE_BUDGETS]
