"""The fine-tune benchmark's page: what was run, each subset's verdict against random (AUC
declared, final beside it) with overfitting and the budget's schedule, the held-out loss of
every subset with its intervals, and the loss curves with their seed bands and the untrained
model's line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..bench.finetune_measures import steps_to_random_text
from . import plots
from .page import Html, Page, esc, facts, figure, paragraph, table, warning
from .results import interval_or_signed, percent, result_tables
from .selection import read_json


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
    verdicts = _finetune_verdicts(results)
    if verdicts:
        page.add("verdicts", "Verdict against random", *verdicts)
    parts: list[Html] = [paragraph("Differences are paired (same seeds, same held-out "
                                   "examples); * marks an interval that excludes zero.", "note")]
    for budget, rows in (results.get("results") or {}).items():
        parts.append(Html(f"<h3>Budget {percent(budget)}</h3>"))
        parts += result_tables(rows if isinstance(rows, dict) else {}, "subset")
    page.add("results", "Held-out loss by subset", *parts)
    cost = results.get("cost")
    if isinstance(cost, dict):
        page.add("cost", "Is selecting worth it? (row-tokens)", *_cost_parts(cost))
    curves = results.get("curves") or {}
    if curves:
        page.add("curves", "Held-out loss curves",
                 figure(plots.lines_figure(_loss_panels(results, curves, out_dir)),
                        "Held-out loss against optimiser steps",
                        "Mean over seeds and held-out examples; the band spans the seeds' "
                        "means where the per-run curves are at hand.", figure_id="curves-plot"))
    return page


def _cost_parts(cost: dict) -> list[Html]:
    """The selection's cost and each budget's fine-tunes, against the full pool's."""
    selection = cost.get("selection")
    parts: list[Html] = [paragraph(
        "Row-tokens: one token of one sequence through the model once (forward+backward counts "
        "once); " + str(cost.get("tokens", "")) + f" ({cost.get('target')}). The last column: "
        "the selection and the fine-tune on its subset as a share of fine-tuning the target on "
        "the full pool for the same epochs (docs/method.md).", "note")]
    if isinstance(selection, dict):
        parts.append(facts([(k.replace("_", " "), v) for k, v in selection.items()
                            if not isinstance(v, dict | list)]))
    else:
        parts.append(paragraph("No G-SNR table among the inputs: the selection's cost is not "
                               "known.", "note"))
    for budget, block in (cost.get("budgets") or {}).items():
        if not isinstance(block, dict):
            continue
        parts.append(Html(f"<h3>Budget {esc(percent(budget))}: the full pool for the same "
                          f"epochs, {esc(block.get('full_pool_same_epochs_row_tokens'))} "
                          "row-tokens</h3>"))
        parts += result_tables(block.get("subsets") or {}, "subset")
    return parts


def _finetune_verdicts(results: dict) -> list[Html]:
    """Each subset's verdict against random on the declared reading (AUC) with the final loss's
    beside it, the paired differences, overfitting in words, the budget's schedule and
    warnings, and random's reselected draws."""
    declared = (results.get("reading") or {}).get("declared", "auc")
    parts: list[Html] = [warning(w) for w in results.get("warnings") or []]
    rows = []
    for budget, table_rows in (results.get("results") or {}).items():
        for name, e in (table_rows if isinstance(table_rows, dict) else {}).items():
            found = e.get("vs_random") if isinstance(e, dict) else None
            if not isinstance(found, dict):
                continue
            overfit = e.get("overfitting") if isinstance(e.get("overfitting"), dict) else {}
            rows.append([percent(budget), name, found.get("auc", "n/a"),
                         interval_or_signed(e.get("auc_vs_random")),
                         found.get("final", "n/a"),
                         interval_or_signed(e.get("final_vs_random")),
                         overfit.get("words") or "no",
                         steps_to_random_text(e.get("steps_to_random_final"))
                         if isinstance(e.get("steps_to_random_final"), dict) else "-",
                         "yes" if found.get("readable", True) else
                         "no: every subset overfits at this budget"])
    if rows:
        parts.append(paragraph(f"Verdict reading declared before the runs: {declared} (the area "
                               "under the held-out curve); the final loss beside it. Better / "
                               "tied / worse: the 95% interval of the paired difference "
                               "(loss minus random's) is below / includes / is above zero.",
                               "note"))
        parts.append(table(["budget", "subset", "vs random (AUC)", "AUC - random",
                            "vs random (final)", "final - random", "overfitting",
                            "steps to random's final", "a result"], rows,
                           table_id="finetune-verdicts"))
    parts += _schedules(results)
    return parts


def _schedules(results: dict) -> list[Html]:
    """Per budget: the steps every run took, how often a record was seen, random's draws."""
    lines = []
    for budget, schedule in (results.get("schedule") or {}).items():
        if not isinstance(schedule, dict):
            continue
        passes = schedule.get("subset_passes")
        random = ((results.get("results") or {}).get(budget) or {}).get("random") or {}
        spread = (random.get("draw_spread") or {}).get("auc") or {}
        draws = (f"; random's {random.get('draws')} draws: AUC "
                 + ", ".join(f"{v:.4f}" for v in spread["per_draw"])
                 if isinstance(spread.get("per_draw"), list) else "")
        lines.append(f"{percent(budget)}: {schedule.get('steps')} steps of batch "
                     f"{schedule.get('batch_size')}"
                     + (f", each subset record seen {passes:.2g} times"
                        if isinstance(passes, int | float) else "") + draws)
    return [paragraph("; ".join(lines) + ".", "note")] if lines else []


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
        untrained = (((results.get("mean_curves") or {}).get(budget) or {}).get("untrained")
                     or [None])[0]
        panels.append(plots.Panel(f"budget {percent(budget)}", "optimiser step",
                                  "held-out loss", series,
                                  None if untrained is None else
                                  (float(untrained), "untrained (step 0)")))
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
