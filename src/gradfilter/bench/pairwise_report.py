"""The pairwise benchmarks' reports: the judge's and the human ratings' results as Markdown, and
the human results as a self-contained HTML page, both written from one list of blocks.

Built from the results dictionaries alone (the contents of results.json), never from live
objects of a run. No torch.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any

from .intervals import Interval
from .pairwise import OUTCOMES, reading

# --------------------------------------------------------------------------------------------
# A document: headings, paragraphs, tables and lists, rendered as Markdown or HTML
# --------------------------------------------------------------------------------------------


class Report:
    """A report as blocks; `markdown()` and `html()` render the same blocks. Inline text may
    use Markdown's `code` and **bold**; everything else in it is literal text."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, text: str, level: int = 1) -> Report:
        self.blocks.append((f"h{level}", text))
        return self

    def paragraph(self, text: str) -> Report:
        self.blocks.append(("p", text))
        return self

    def table(self, header: list[str], rows: list[list[Any]], right: tuple[int, ...] = ()
              ) -> Report:
        """`right`: the columns aligned right (counts and figures)."""
        self.blocks.append(("table", (header, [[str(c) for c in r] for r in rows], right)))
        return self

    def bullets(self, items: list[str]) -> Report:
        self.blocks.append(("ul", items))
        return self

    def markdown(self) -> str:
        return "\n\n".join(_markdown_block(kind, body) for kind, body in self.blocks) + "\n"

    def html(self, title: str) -> str:
        """The blocks as a page in the one style of every page gradfilter writes."""
        from ..report.page import document

        body = "\n".join(_html_block(kind, body) for kind, body in self.blocks)
        return document(title, f"<main>\n{body}\n</main>")


def _markdown_block(kind: str, body: Any) -> str:
    if kind.startswith("h"):
        return "#" * int(kind[1:]) + " " + body
    if kind == "table":
        header, rows, right = body
        rule = "|" + "|".join("---:" if k in right else "---" for k in range(len(header))) + "|"
        return "\n".join(["| " + " | ".join(header) + " |", rule,
                          *("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
                            for cells in rows)])
    if kind == "ul":
        return "\n".join(f"- {item}" for item in body)
    return body


def _inline_html(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]*)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def _html_block(kind: str, body: Any) -> str:
    if kind.startswith("h"):
        return f"<{kind}>{_inline_html(body)}</{kind}>"
    if kind == "table":
        header, rows, right = body
        head = "".join(f"<th>{_inline_html(c)}</th>" for c in header)
        lines = ["<tr>" + "".join(
            f"<td class=\"num\">{_inline_html(c)}</td>" if k in right
            else f"<td>{_inline_html(c)}</td>" for k, c in enumerate(row)) + "</tr>"
            for row in rows]
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(lines) + \
            "\n</tbody>\n</table>"
    if kind == "ul":
        return "<ul>\n" + "\n".join(f"<li>{_inline_html(i)}</li>" for i in body) + "\n</ul>"
    return f"<p>{_inline_html(body)}</p>"


# --------------------------------------------------------------------------------------------
# Shared cells
# --------------------------------------------------------------------------------------------


def interval_cell(interval: dict[str, float]) -> str:
    """`1.450 [1.150, 1.700]`; `n/a` where nothing was scored."""
    if interval["estimate"] is None or not math.isfinite(interval["estimate"]):
        return "n/a"
    low, high = interval["low"], interval["high"]
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{interval['estimate']:.3f} [n/a]"
    return str(Interval(interval["estimate"], low, high))


def summary_rows(label: str, a: str, b: str, per_set: dict[str, Any], pooled: dict[str, Any],
                 missing: str) -> list[list[Any]]:
    """One row per test set and the pooled row: pair, test set, counts, score, reading."""
    return [[label, name, s["wins"], s["ties"], s["losses"], s[missing],
             interval_cell(s["winning_score"]), reading(s["winning_score"], a, b)]
            for name, s in [*per_set.items(), ("pooled", pooled)]]


def summary_header(first: str, missing: str) -> list[str]:
    return [first, "test set", "wins", "ties", "losses", missing, "winning score [95% CI]",
            "reading"]


SUMMARY_RIGHT = (2, 3, 4, 5)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# The judge benchmark's report
# --------------------------------------------------------------------------------------------


def judge_report(results: dict[str, Any]) -> Report:
    """One row per pair and test set (and pooled), then the unparsed replies."""
    judge = results["judge"]
    n = sum(t["prompts"] for t in results["test_sets"].values())
    report = Report().heading("LLM-judge benchmark").paragraph(
        f"Judge `{judge['model']}` at {judge['url']} (prompt {judge['template']}), both orders; "
        f"{n} prompts per pair. Winning score = (wins - losses) / judged + 1 with its 95% "
        "bootstrap interval over prompts; 1 is even. Unparsed prompts are counted, not scored.")
    if n < 30:
        report.paragraph(f"**Smoke test: {n} prompts per pair.**")
    rows = [row for pair in results["pairs"] for row in summary_rows(
        f"{pair['a']} vs {pair['b']}", pair["a"], pair["b"], pair["test_sets"], pair["pooled"],
        "unparsed")]
    report.table(summary_header("pair (A vs B)", "unparsed"), rows, SUMMARY_RIGHT)
    unparsed = [(pair, u) for pair in results["pairs"] for u in pair["unparsed"]]
    if unparsed:
        report.heading(f"Unparsed judge replies ({len(unparsed)})", 2).bullets([
            f"{pair['a']} vs {pair['b']}, {u['prompt_id']}, {u['order']}, {u['attempts']} "
            f"tries: `{_one_line(u['reply'])[:200].replace('`', chr(39))}`"
            for pair, u in unparsed])
    return report


def results_markdown(results: dict[str, Any]) -> str:
    """The judge benchmark's results.md."""
    return judge_report(results).markdown()


# --------------------------------------------------------------------------------------------
# The human ratings' report
# --------------------------------------------------------------------------------------------


def item_numbers(numbers: list[int]) -> str:
    """`item 3` / `items 3, 6`: as the sheet numbers them ("Item 3 of 100")."""
    return ("item " if len(numbers) == 1 else "items ") + ", ".join(map(str, numbers))


def _kappa_cell(agreement: dict[str, Any], name: str) -> str:
    return interval_cell(agreement[name]) if agreement["items"] else "n/a"


def _share(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.0f}%"


def human_report(results: dict[str, Any]) -> Report:
    """The human verdict (majority vote) per pair and test set, each rater's, the raters'
    agreement, and agreement with the judge where a judge run exists."""
    n = sum(t["prompts"] for t in results["test_sets"].values())
    raters = results["raters"]
    given = sum(r["given"] for r in raters)
    report = Report().heading("Human pairwise ratings").paragraph(
        f"{given} raters" + (f" ({len(raters)} sheets)" if given < len(raters) else "")
        + ", blind sheets (each model shown first in half of the items); "
        f"{n} prompts per pair. Verdict per item = the outcome more than half of its raters "
        "chose, else a tie. Winning score = (wins - losses) / rated + 1 with its 95% bootstrap "
        "interval over prompts; 1 is even. Unrated items are counted, not scored.")
    if n < 30:
        report.paragraph(f"**Smoke test: {n} prompts per pair.**")
    for pair in results["pairs"]:
        _human_pair(report, pair)
    unrated = [f"{r['rater']} ({r['sheet_file']}): {len(r['unrated'])} of {r['items']} "
               f"unrated: {item_numbers(r['unrated'])}" for r in raters if r["unrated"]]
    if unrated:
        report.heading("Unrated items", 2).bullets(unrated)
    return report


def _human_pair(report: Report, pair: dict[str, Any]) -> None:
    a, b = pair["a"], pair["b"]
    report.heading(f"{a} vs {b}", 2)
    rows = summary_rows("majority", a, b, pair["test_sets"], pair["pooled"], "unrated")
    for rater, summary in pair["raters"].items():
        rows += summary_rows(rater, a, b, summary["test_sets"], summary["pooled"], "unrated")
    report.table(summary_header("verdict by", "unrated"), rows, SUMMARY_RIGHT)
    agreement = pair["agreement"]
    report.paragraph(
        f"Agreement between raters over the {agreement['items']} items all rated: Fleiss' "
        f"kappa {_kappa_cell(agreement, 'fleiss_kappa')}; unanimous "
        f"{_share(agreement['unanimous'])} of them.")
    judge = pair.get("judge")
    if judge is None:
        report.paragraph("No judge run for this pair.")
        return
    report.paragraph(
        f"Agreement with the judge (`{judge['model']}`, {judge['results']}) over the "
        f"{judge['majority']['items']} items both scored: majority vote Cohen's kappa "
        f"{_kappa_cell(judge['majority'], 'cohen_kappa')}, equal outcome "
        f"{_share(judge['majority']['equal'])}; per rater: " + "; ".join(
            f"{rater} {_kappa_cell(agree, 'cohen_kappa')}"
            for rater, agree in judge["raters"].items()) + ".")
    table = judge["majority"]["confusion"]
    report.table([f"majority \\ judge ({a}'s outcome)", *OUTCOMES],
                 [[o, *table[k]] for k, o in enumerate(OUTCOMES)], (1, 2, 3))
