"""The pairwise statistics that the judge and the human benchmarks share (bench/pairwise.py),
and their report's two renderings (bench/pairwise_report.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from gradfilter.bench.pairwise import (
    annotator_agreement,
    cohen_kappa,
    confusion,
    finite,
    fleiss_kappa,
    flipped,
    majority,
    rater_agreement,
    reading,
    summarize,
    winning_score,
)
from gradfilter.bench.pairwise_report import Report, interval_cell


def test_winning_score():
    assert winning_score(10, 0, 0) == 2.0
    assert winning_score(0, 0, 10) == 0.0
    assert winning_score(3, 4, 3) == 1.0
    assert winning_score(6, 2, 2) == pytest.approx(1.4)
    assert winning_score(0, 0, 0) != winning_score(0, 0, 0)  # NaN: nothing judged


def test_summarize_counts_unparsed_apart_and_bootstraps():
    outcomes = ["win"] * 12 + ["tie"] * 5 + ["lose"] * 3 + ["unparsed"] * 2
    s = summarize(outcomes, seed=0)
    assert (s["wins"], s["ties"], s["losses"], s["unparsed"], s["judged"]) == (12, 5, 3, 2, 20)
    interval = s["winning_score"]
    assert interval["estimate"] == pytest.approx(winning_score(12, 5, 3)) == pytest.approx(1.45)
    assert interval["low"] < interval["estimate"] < interval["high"]
    assert interval["low"] > 1.0  # 12 wins to 3 losses over 20 prompts is clearly better
    assert summarize(["tie"] * 4)["winning_score"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    empty = summarize(["unparsed"])
    assert empty["judged"] == 0 and empty["unparsed"] == 1
    assert empty["winning_score"]["estimate"] != empty["winning_score"]["estimate"]


def test_summarize_names_what_is_left_out():
    s = summarize(["win", "unrated", "lose", "unrated"], missing="unrated")
    assert (s["wins"], s["losses"], s["unrated"], s["judged"]) == (1, 1, 2, 2)
    assert "unparsed" not in s


def test_flipped_and_majority():
    assert [flipped(o) for o in ("win", "tie", "lose", "unrated")] == [
        "lose", "tie", "win", "unrated"]
    assert majority(["win", "win", "lose"]) == "win"
    assert majority(["win", "tie", "lose"]) == "tie"  # no majority: even
    assert majority(["lose", "lose", "unrated"]) == "lose"  # of the votes given
    assert majority(["win", "lose"]) == "tie"
    assert majority(["tie", "tie", "win"]) == "tie"
    assert majority(["unrated", "unrated"]) == "unrated"
    # The median of three votes, as Cherry's majority vote reads.
    value = {"win": 1, "tie": 0, "lose": -1}
    for a in value:
        for b in value:
            for c in value:
                median = sorted([value[a], value[b], value[c]])[1]
                assert value[majority([a, b, c])] == median


def test_cohen_kappa_textbook_table():
    # 50 items: 20 both yes, 15 both no, 5 and 10 disagreeing: observed 0.7, chance 0.5.
    assert cohen_kappa(np.array([[20, 5], [10, 15]])) == pytest.approx(0.4)
    assert cohen_kappa(np.diag([3, 4, 5])) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(np.array([[5, 0], [0, 0]])))  # one outcome only: undefined


def test_fleiss_kappa_textbook_table():
    # Fleiss (1971) as worked in the literature: 10 items, 14 raters, 5 categories: 0.210.
    counts = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
                       [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
                       [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa(np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3]])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[3, 0, 0], [0, 2, 0]]))


def test_two_raters_fleiss_is_near_cohen():
    rng = np.random.default_rng(0)
    outcomes = ("win", "tie", "lose")
    first = [outcomes[k] for k in rng.integers(0, 3, 200)]
    second = [x if rng.random() < 0.6 else outcomes[k]
              for x, k in zip(first, rng.integers(0, 3, 200), strict=True)]
    cohen = annotator_agreement(first, second)["cohen_kappa"]["estimate"]
    fleiss = rater_agreement(list(zip(first, second, strict=True)))["fleiss_kappa"]["estimate"]
    assert 0.4 < cohen < 0.8
    assert fleiss == pytest.approx(cohen, abs=0.02)  # they differ only in the chance term


def test_rater_agreement_counts_only_complete_items():
    rows = [("win", "win", "win"), ("win", "tie", "win"), ("lose", "lose", "lose"),
            ("win", "unrated", "win"), ("tie", "tie", "tie")]
    agreement = rater_agreement(rows, seed=1)
    assert agreement["items"] == 4
    assert agreement["unanimous"] == pytest.approx(3 / 4)
    kappa = agreement["fleiss_kappa"]
    assert kappa["estimate"] == pytest.approx(fleiss_kappa(
        np.array([[3, 0, 0], [2, 1, 0], [0, 0, 3], [0, 3, 0]])))
    assert kappa["low"] <= kappa["estimate"] <= kappa["high"]
    assert math.isnan(rater_agreement([("win",), ("lose",)])["fleiss_kappa"]["estimate"])


def test_annotator_agreement_confusion_and_kappa():
    human = ["win", "win", "tie", "lose", "lose", "unrated", "win"]
    judge = ["win", "tie", "tie", "lose", "win", "win", "unparsed"]
    agreement = annotator_agreement(human, judge)
    assert agreement["items"] == 5
    assert agreement["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert agreement["confusion"] == confusion(human[:5], judge[:5])
    assert agreement["equal"] == pytest.approx(3 / 5)
    assert agreement["cohen_kappa"]["estimate"] == pytest.approx(
        cohen_kappa(np.array(agreement["confusion"])))


def test_finite_and_cells():
    assert finite({"a": [math.nan, 1.0], "b": (math.inf,)}) == {"a": [None, 1.0], "b": [None]}
    assert interval_cell({"estimate": 1.5, "low": 1.2, "high": 1.8}) == "1.500 [1.200, 1.800]"
    assert interval_cell({"estimate": None, "low": None, "high": None}) == "n/a"
    assert reading({"low": 1.1, "high": 1.5}, "a", "b") == "a better"
    assert reading({"low": 0.2, "high": 0.9}, "a", "b") == "b better"
    assert reading({"low": 0.9, "high": 1.1}, "a", "b") == "tied"
    assert reading({"low": None, "high": None}, "a", "b") == "tied"


def test_report_renders_the_same_blocks_as_markdown_and_html():
    report = (Report().heading("Title").paragraph("Some `code` and **bold** <b>text</b>")
              .table(["name", "n"], [["x|y", 3]], right=(1,)).bullets(["one", "two"]))
    assert report.markdown() == ("# Title\n\nSome `code` and **bold** <b>text</b>\n\n"
                                 "| name | n |\n|---|---:|\n| x\\|y | 3 |\n\n- one\n- two\n")
    page = report.html("T <1>")
    assert "<title>T &lt;1&gt;</title>" in page
    assert "<p>Some <code>code</code> and <strong>bold</strong> &lt;b&gt;text&lt;/b&gt;</p>" in page
    assert '<td>x|y</td><td class="num">3</td>' in page
    assert "<li>two</li>" in page and "<script" not in page and not re.search(r"https?:", page)
