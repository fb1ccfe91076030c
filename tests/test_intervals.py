import itertools
import math

import numpy as np
import pytest

from gradfilter.bench.intervals import Interval, auprc, auroc, bootstrap, t_interval


def _auroc_by_pairs(scores, positive):
    wins = 0.0
    pairs = 0
    for p, n in itertools.product(np.flatnonzero(positive), np.flatnonzero(~positive)):
        a = scores[p] if np.isfinite(scores[p]) else -np.inf
        b = scores[n] if np.isfinite(scores[n]) else -np.inf
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
        pairs += 1
    return wins / pairs


def _auprc_by_thresholds(scores, positive):
    """Average precision summed over the distinct thresholds, highest first."""
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    total = 0.0
    for threshold in sorted(set(scores.tolist()), reverse=True):
        kept = scores >= threshold
        at = scores == threshold
        total += positive[kept].mean() * positive[at].sum()
    return total / positive.sum()


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_auprc_match_brute_force_with_ties_and_nan(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    scores[rng.integers(0, 40, 3)] = np.nan
    positive = rng.random(40) < 0.3
    assert auroc(scores, positive) == pytest.approx(_auroc_by_pairs(scores, positive), abs=1e-12)
    assert auprc(scores, positive) == pytest.approx(_auprc_by_thresholds(scores, positive),
                                                    abs=1e-12)


def test_perfect_and_reversed_rankings():
    positive = np.array([True, True, False, False])
    assert auroc(np.array([4.0, 3, 2, 1]), positive) == 1.0
    assert auroc(np.array([1.0, 2, 3, 4]), positive) == 0.0
    assert auprc(np.array([4.0, 3, 2, 1]), positive) == 1.0
    assert auprc(np.array([1.0, 2, 3, 4]), positive) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert math.isnan(auroc(np.array([1.0, 2]), np.array([True, True])))


def test_bootstrap_interval_of_a_mean_covers_the_truth_at_about_95_percent():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        sample = rng.normal(1.0, 2.0, 60)
        interval = bootstrap(lambda idx, s=sample: s[idx].mean(), [60], resamples=300,
                             seed=trial)
        covered += interval.low <= 1.0 <= interval.high
        assert interval.estimate == pytest.approx(sample.mean())
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_bootstrap_sees_a_small_consistent_difference():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 5, 200)  # large spread shared by both methods
    a, b = base + 0.3 + rng.normal(0, 0.1, 200), base
    paired = bootstrap(lambda idx: (a[idx] - b[idx]).mean(), [200], seed=0)
    assert paired.excludes_zero and paired.low > 0.2
    unpaired = bootstrap(lambda i, j: a[i].mean() - b[j].mean(), [200, 200], seed=0)
    assert not unpaired.excludes_zero


def test_t_interval_known_values():
    interval = t_interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert interval == Interval(2.0, 2.0 - half, 2.0 + half)
    assert math.isnan(t_interval([5.0]).low)
    assert not Interval(0.1, -0.1, 0.3).excludes_zero
    assert Interval(-0.2, -0.3, -0.1).excludes_zero


@pytest.mark.parametrize("seed", range(4))
def test_weighted_ranking_equals_the_resample_written_out(seed):
    """A record drawn w times counts w times: AUROC, AUPRC and top-k shares from the weights
    equal those of the resampled records listed one by one (ties, NaN and all)."""
    from gradfilter.bench.intervals import Ranking
    from gradfilter.selection import select_top

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 8, 50).astype(float)
    scores[rng.integers(0, 50, 4)] = np.nan
    marked = rng.random(50) < 0.25
    weights = np.bincount(rng.integers(0, 50, 50), minlength=50).astype(float)
    listed = np.repeat(np.arange(50), weights.astype(int))
    ranking = Ranking(scores)
    assert ranking.auroc(marked, weights) == pytest.approx(
        auroc(scores[listed], marked[listed]), abs=1e-12)
    assert ranking.auprc(marked, weights) == pytest.approx(
        auprc(scores[listed], marked[listed]), abs=1e-12)
    for ratio in (0.05, 0.1, 0.3, 1.0):
        kept = select_top(scores, ratio=ratio).indices
        assert ranking.top_share(marked, ratio) == pytest.approx(marked[kept].mean())
        # the written-out resample: copies of a record are adjacent in rank order, so the top
        # k copies are the weighted walk down the ranking
        k = select_top(scores[listed], ratio=ratio).indices
        assert ranking.top_share(marked, ratio, weights) == pytest.approx(
            marked[listed][k].mean())
