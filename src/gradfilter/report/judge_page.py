"""The judge benchmark's page: the judge and the models, every pair's wins, ties and losses per
test set with the winning score's interval and reading, and the judge's unparsed replies."""

from __future__ import annotations

import json
from pathlib import Path

from ..bench.pairwise import reading
from . import plots
from .page import Html, Page, details, facts, figure, json_block, table
from .results import interval_text, is_interval


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
                         reading(score, a, b)])
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
