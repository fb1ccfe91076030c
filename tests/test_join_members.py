"""benchmarks/studies/join_members.py: two seeds' tables of the same records as one table of 2M
members, on tables made by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "studies"))

from join_members import join_members

from gradfilter.config import ScoreConfig
from gradfilter.errors import GradfilterError
from gradfilter.table import gsnr_table, record_columns, utility_scores
from gradfilter.utilities import compute_utilities

SKIPPED = 2  # record 2 was not scored


def made_table(rng: np.random.Generator, config: ScoreConfig, n: int = 6):
    scorable = np.setdiff1d(np.arange(n), [SKIPPED])
    sqnorms = {e: rng.uniform(0.5, 2.0, (len(scorable), config.members)) for e in (1, 2)}
    losses = {e: rng.uniform(1.0, 3.0, (len(scorable), config.members)) for e in (1, 2)}
    head = record_columns(n, np.full(n, 7), np.zeros(n, bool),
                          [("empty" if i == SKIPPED else None) for i in range(n)])
    table = gsnr_table(head, scorable, losses, sqnorms, config,
                       ifd_ratio=np.linspace(0.5, 1.2, n))
    return table, losses, sqnorms


def test_joined_utilities_are_those_of_all_members():
    rng = np.random.default_rng(0)
    config = ScoreConfig(members=3)
    first, losses_a, sq_a = made_table(rng, config)
    second, losses_b, sq_b = made_table(rng, ScoreConfig(members=3, seed=1))
    joined = join_members(first, second)
    assert "sqnorm_e2_m5" in joined.column_names and "sqnorm_e2_m6" not in joined.column_names
    np.testing.assert_array_equal(joined["sqnorm_e1_m4"].to_numpy()[[0, 1, 3]], sq_b[1][:3, 1])
    scorable = [0, 1, 3, 4, 5]
    sq = {e: np.concatenate([sq_a[e], sq_b[e]], axis=1) for e in (1, 2)}
    loss = {e: np.concatenate([losses_a[e], losses_b[e]], axis=1) for e in (1, 2)}
    expected = compute_utilities(sq[1], sq[2], loss[1], loss[2],
                                 ifd_ratio=np.linspace(0.5, 1.2, 6)[scorable])
    for name in ("snr-member", "snr-member-gated", "gsnr", "uncertainty"):
        scores = utility_scores(joined, name)
        np.testing.assert_allclose(scores[scorable], expected[name])
        assert np.isnan(scores[SKIPPED])
    # and not those of one seed's members alone
    assert not np.allclose(utility_scores(joined, "uncertainty"),
                           utility_scores(first, "uncertainty"), equal_nan=True)


@pytest.mark.parametrize("other, message", [
    (ScoreConfig(members=3), "same seed"),
    (ScoreConfig(members=3, seed=1, lr=1e-3), "differ in lr"),
])
def test_refuses_runs_that_are_not_two_draws_of_one_setting(other, message):
    rng = np.random.default_rng(1)
    first, _, _ = made_table(rng, ScoreConfig(members=3))
    second, _, _ = made_table(rng, other)
    with pytest.raises(GradfilterError, match=message):
        join_members(first, second)


def test_refuses_tables_of_other_records():
    rng = np.random.default_rng(2)
    first, _, _ = made_table(rng, ScoreConfig(members=3))
    second, _, _ = made_table(rng, ScoreConfig(members=3, seed=1), n=7)
    with pytest.raises(GradfilterError, match="not of the same records"):
        join_members(first, second)
