"""Utilities against their formulas on a hand-made table; selection rules."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from gradfilter import GradfilterError, select_top, utility_scores, with_utilities
from gradfilter.utilities import EPS, TARGET_UTILITIES
from gradfilter.utilities import UTILITIES as ALL_UTILITIES

# Two members; rows: ordinary, zero variance, zero magnitude (all norms 0), unscored (NaN).
EARLY = np.array([[4.0, 2.0], [3.0, 3.0], [0.0, 0.0], [np.nan, np.nan]])
LATE = np.array([[1.0, 3.0], [1.5, 1.5], [0.0, 0.0], [np.nan, np.nan]])
# Losses: ordinary; the last two rows have a zero drop.
LOSS_EARLY = np.array([[2.0, 3.0], [1.0, 1.0], [0.5, 0.7], [np.nan, np.nan]])
LOSS_LATE = np.array([[1.0, 2.0], [1.0, 1.0], [0.5, 0.7], [np.nan, np.nan]])
# IFD ratios: kept by the gate (< 1), at the boundary (1: not kept), unscored.
IFD_RATIO = np.array([0.5, 1.0, 0.9, np.nan])
# The alignment utilities need a target's columns: tests/test_target.py.
UTILITIES = tuple(u for u in ALL_UTILITIES if u not in TARGET_UTILITIES)
BASES = [u for u in UTILITIES if not u.endswith("-gated")]


def _table(losses: bool = True, ifd: bool = True) -> pa.Table:
    columns = {"index": pa.array(np.arange(4))}
    if ifd:
        columns["ifd_ratio"] = pa.array(IFD_RATIO)
    for epoch, norms, loss in ((1, EARLY, LOSS_EARLY), (2, LATE, LOSS_LATE)):
        for m in range(2):
            if losses:
                columns[f"loss_e{epoch}_m{m}"] = pa.array(loss[:, m])
            columns[f"sqnorm_e{epoch}_m{m}"] = pa.array(norms[:, m])
    return pa.table(columns)


def _norm_ratio(early, late):
    """gsnr-norm by hand: relative drop of the mean norm over the late norms' CV."""
    g_s, g_t = [math.sqrt(v) for v in early], [math.sqrt(v) for v in late]
    mean_s, mean_t = sum(g_s) / 2, sum(g_t) / 2
    cv = abs(g_t[0] - g_t[1]) / 2 / mean_t
    return (mean_s - mean_t) / (mean_s + EPS) / (cv + EPS)


def test_utilities_follow_their_formulas():
    table = with_utilities(_table())
    # Row 0: G_s = 3, G_t = 2, D = 1/3, V = var(1, 3) = 1, std 1; member drops 3/4 and -1/2.
    expected_row0 = {"gsnr": (1 / 3) / (1 + EPS), "gsnr-cv": (1 / 3) / (1 / 4 + EPS),
                     "drop": 1 / 3, "gradnorm": 2.0, "uncertainty": 1.0,
                     "snr-drop": 1 / (1 + EPS), "snr-member": 0.125 / (0.625 + EPS),
                     "gsnr-norm": _norm_ratio([4, 2], [1, 3]),
                     "loss": -1.5, "loss-drop": 1.0 / (2.5 + EPS)}
    # Row 1: zero variance: G_s = 3, G_t = 1.5, D = 0.5, V = 0; both member drops 0.5.
    expected_row1 = {"gsnr": 0.5 / EPS, "gsnr-cv": 0.5 / EPS, "drop": 0.5, "gradnorm": 1.5,
                     "uncertainty": 0.0, "snr-drop": 1.5 / EPS, "snr-member": 0.5 / EPS,
                     "gsnr-norm": (1 - math.sqrt(0.5)) / EPS, "loss": -1.0, "loss-drop": 0.0}
    # Row 2: zero magnitude: D = 0 / eps = 0, V = 0, V / G^2 taken as 0; zero loss drop.
    expected_row2 = {"gsnr": 0.0, "gsnr-cv": 0.0, "drop": 0.0, "gradnorm": 0.0,
                     "uncertainty": 0.0, "snr-drop": 0.0, "snr-member": 0.0, "gsnr-norm": 0.0,
                     "loss": -0.6, "loss-drop": 0.0}
    assert set(expected_row0) == set(BASES)
    for utility in BASES:
        scores = utility_scores(table, utility)
        assert scores[0] == pytest.approx(expected_row0[utility], rel=1e-9), utility
        assert scores[1] == pytest.approx(expected_row1[utility], rel=1e-9), utility
        assert scores[2] == pytest.approx(expected_row2[utility], abs=1e-300), utility
        assert np.isnan(scores[3])


def test_gated_utilities_keep_the_score_where_ifd_is_below_one():
    """`<u>-gated`: u where the IFD ratio is below 1, NaN (never selected) at 1 and above and
    where unscored."""
    table = with_utilities(_table())
    gated = [u for u in UTILITIES if u.endswith("-gated")]
    assert {u.removesuffix("-gated") for u in gated} == {
        "gsnr", "gsnr-cv", "snr-drop", "snr-member", "gsnr-norm", "loss", "loss-drop"}
    for utility in gated:
        base = utility_scores(table, utility.removesuffix("-gated"))
        scores = utility_scores(table, utility)
        assert scores[0] == base[0] and scores[2] == base[2], utility
        assert np.isnan(scores[1]) and np.isnan(scores[3]), utility
    assert list(select_top(utility_scores(table, "gsnr-gated"), count=4).indices) == [0, 2]
    without = with_utilities(_table(ifd=False))
    assert "gsnr_gated" not in without.column_names and "gsnr" in without.column_names
    with pytest.raises(GradfilterError, match="no utility 'gsnr-gated'"):
        utility_scores(without, "gsnr-gated")


def test_the_default_utility_is_the_study_s_choice_and_its_ungated_form_without_ifd():
    from gradfilter.table import default_utility
    from gradfilter.utilities import DEFAULT_UNGATED, DEFAULT_UTILITY

    assert f"{DEFAULT_UNGATED}-gated" == DEFAULT_UTILITY
    assert default_utility(_table()) == DEFAULT_UTILITY
    assert default_utility(_table(ifd=False)) == DEFAULT_UNGATED


def test_a_table_without_losses_offers_every_utility_but_the_loss_ones():
    table = with_utilities(_table(losses=False))
    assert "loss" not in table.column_names and "gsnr" in table.column_names
    with pytest.raises(GradfilterError, match="no utility 'loss'"):
        utility_scores(table, "loss")


def test_utility_from_raw_columns_equals_stored_column():
    raw, full = _table(), with_utilities(_table())
    for utility in UTILITIES:
        np.testing.assert_array_equal(utility_scores(raw, utility), utility_scores(full, utility))


def test_unknown_utility_is_a_clear_error():
    with pytest.raises(GradfilterError, match="no utility 'magic'; it offers"):
        utility_scores(_table(), "magic")


def test_selection_highest_first_ties_by_position_nonfinite_never():
    scores = np.array([0.5, np.nan, 2.0, 0.5, np.inf, 2.0, -1.0, 0.5])
    picked = select_top(scores, count=4)
    assert picked.indices.tolist() == [2, 5, 0, 3]
    assert picked.n_nonfinite == 2
    assert picked.in_order("input").tolist() == [0, 2, 3, 5]
    everything = select_top(scores, ratio=1.0)
    assert everything.requested == 8
    assert sorted(everything.indices.tolist()) == [0, 2, 3, 5, 6, 7]


def test_ratio_rounds_half_up_and_bad_budgets_fail():
    scores = np.arange(25, dtype=float)
    assert len(select_top(scores, ratio=0.1).indices) == 3  # 2.5 -> 3
    assert len(select_top(scores, ratio=0.05).indices) == 1  # 1.25 -> 1
    for bad in (dict(), dict(ratio=0.1, count=3), dict(ratio=1.5), dict(count=-1)):
        with pytest.raises(GradfilterError):
            select_top(scores, **bad)
