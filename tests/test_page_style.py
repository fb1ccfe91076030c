"""One style for every HTML page gradfilter writes: report pages, the human ratings' results
page and the blind rating sheets inline the same stylesheet (report/style.css), and no other
stylesheet is written anywhere in the package."""

from __future__ import annotations

import re
from pathlib import Path

from gradfilter.bench.human import render_sheet
from gradfilter.bench.pairwise_report import Report
from gradfilter.report.page import Page, stylesheet

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gradfilter"
STYLE = re.compile(r"<style>(.*?)</style>", re.S)
# a CSS rule: a selector, then a declaration block with a property the pages style
RULE = re.compile(r"[\w#.\]:)-]\s*\{[^{}]*\b(?:color|font|margin|padding|border|background)"
                  r"(?:-[a-z]+)?\s*:")


def _styles(page: str) -> list[str]:
    return [style.strip() for style in STYLE.findall(page)]


def test_every_page_inlines_the_one_stylesheet():
    sheet = render_sheet({"sheet": "s", "rater": "rater-1", "title": "Which <one>?",
                          "items": []})
    pages = {"report": Page("A report", lead="lead").render(),
             "human results": Report().heading("Human pairwise ratings").html("results"),
             "rating sheet": sheet}
    css = stylesheet().strip()
    assert "body.sheet" in css and "td.num" in css  # the sheet's rules and the reports'
    for name, page in pages.items():
        assert _styles(page) == [css], name
    assert '<body class="sheet">' in sheet and "{{" not in sheet


def test_no_other_stylesheet_in_the_package():
    """Only style.css holds CSS rules; a page writer that brought its own would show here."""
    assert RULE.search(stylesheet())  # the pattern finds the rules it looks for
    others = {str(path.relative_to(PACKAGE)): RULE.findall(path.read_text(encoding="utf-8"))
              for path in PACKAGE.rglob("*") if path.suffix in (".py", ".html")}
    assert {name: found for name, found in others.items() if found} == {}
