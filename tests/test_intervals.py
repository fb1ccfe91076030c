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


@pytest.mark.parametrize("seed", range(3))
def test_many_resamples_at_once_equal_one_at_a_time(seed):
    """[resamples, n] weights give row by row what each row gives alone, and the blocks of
    resample weights are the draws of `resample_weights`, in order."""
    from gradfilter.bench.intervals import Ranking, resample_weight_blocks, resample_weights

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 8, 40).astype(float)
    scores[rng.integers(0, 40, 3)] = np.nan
    marked = rng.random(40) < 0.3
    weights = resample_weights(40, 30, seed)
    assert np.array_equal(np.concatenate(list(resample_weight_blocks(40, 30, seed, 7))),
                          weights)
    weights[0] = 0.0  # a row with no record: no number
    weights[1] = np.where(marked, weights[1], 0.0)  # only marked records: no AUROC
    ranking = Ranking(scores)
    for name, args in (("auroc", (marked,)), ("auprc", (marked,)),
                       ("top_share", (marked, 0.2)), ("top_share", (marked, 0.02))):
        method = getattr(ranking, name)
        together = method(*args, weights)
        alone = [method(*args, w) for w in weights]
        np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12, err_msg=name)
        assert np.isnan(together[0])


# --- exact shares, verdicts, coverage --------------------------------------------------------

RATES = (0.0, 0.05, 0.2)
SUBSET_SIZES = (10, 30, 100, 300, 1000)
DRAWS = 1000


def _share_intervals(found: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson bounds of each draw, computed once per distinct count."""
    from gradfilter.bench.intervals import clopper_pearson

    values, where = np.unique(found, return_inverse=True)
    low, high = clopper_pearson(values, size)
    return low[where], high[where]


def test_clopper_pearson_known_values_and_edges():
    from gradfilter.bench.intervals import clopper_pearson, share_interval

    n = 10
    low, high = clopper_pearson(np.arange(n + 1), n)
    assert low[0] == 0 and high[-1] == 1
    assert high[0] == pytest.approx(1 - 0.025 ** (1 / n), abs=1e-10)  # 0 of n: (alpha/2)^(1/n)
    assert low[1] == pytest.approx(1 - 0.975 ** (1 / n), abs=1e-10)
    assert low[-1] == pytest.approx(0.025 ** (1 / n), abs=1e-10)
    assert low == pytest.approx(1 - high[::-1], abs=1e-10)  # symmetric in successes
    assert (np.diff(low) > 0).all() and (np.diff(high) > 0).all()
    # 0 of 15 kept records corrupted is not a certainty of 0
    clean = share_interval(0, 15)
    assert (clean.estimate, clean.low) == (0.0, 0.0) and clean.high == pytest.approx(0.218,
                                                                                      abs=1e-3)
    assert math.isnan(share_interval(0, 0).estimate)


@pytest.mark.parametrize("rate", RATES)
def test_a_share_interval_covers_the_true_rate(rate):
    """1,000 subsets of each size drawn at a known rate: the 95% interval of the corrupted share
    covers the rate in at least 93% of them, and never collapses to a point at zero."""
    rng = np.random.default_rng(round(rate * 1000))
    for size in SUBSET_SIZES:
        found = rng.binomial(size, rate, DRAWS)
        low, high = _share_intervals(found, size)
        covered = ((low <= rate) & (rate <= high)).mean()
        assert covered >= 0.93, (rate, size, covered)
        assert (high > 0).all()


@pytest.mark.parametrize("rate", RATES)
def test_differences_of_label_blind_selections_cover_zero(rate):
    """Pools of size/0.1 records at a known rate; a selection blind to the labels keeps `size` of
    them. Its share minus the pool's rate (what `vs random` is widened to contain), and the
    difference of two such selections (Newcombe), cover the true difference 0 in at least 93% of
    1,000 pools, and tell `better` or `worse` from a blind ranking no more often than that."""
    from gradfilter.bench.intervals import Interval, share_difference, shifted, verdict

    rng = np.random.default_rng(7 + round(rate * 1000))
    for size in SUBSET_SIZES:
        pool = size * 10
        corrupted = rng.binomial(pool, rate, DRAWS)
        first = rng.hypergeometric(corrupted, pool - corrupted, size)
        second = rng.hypergeometric(corrupted, pool - corrupted, size)
        low, high = _share_intervals(np.concatenate([first, second]), size)
        shares = [Interval(x / size, lo, hi) for x, lo, hi in
                  zip(np.concatenate([first, second]), low, high, strict=True)]
        versus_rate = [verdict(shifted(s, -k / pool), higher_is_better=False)
                       for s, k in zip(shares[:DRAWS], corrupted, strict=True)]
        versus_other = [verdict(share_difference(a, b), higher_is_better=False)
                        for a, b in zip(shares[:DRAWS], shares[DRAWS:], strict=True)]
        assert versus_rate.count("tied") >= 0.93 * DRAWS, (rate, size, "rate")
        assert versus_other.count("tied") >= 0.93 * DRAWS, (rate, size, "other")


def test_verdicts_and_widening():
    from gradfilter.bench.intervals import Interval, verdict, widened

    assert verdict(Interval(0.1, 0.02, 0.2)) == "better"
    assert verdict(Interval(0.1, 0.02, 0.2), higher_is_better=False) == "worse"
    assert verdict({"estimate": -0.1, "low": -0.2, "high": -0.01}) == "worse"
    assert verdict(Interval(0.0, -0.1, 0.1)) == "tied"
    assert verdict(Interval(math.nan, math.nan, math.nan)) == "n/a"
    wide = widened(Interval(-0.2, -0.22, -0.18), Interval(-0.2, -0.2, 0.018))
    assert wide == Interval(-0.2, -0.22, 0.018)
    assert widened(Interval(0.5, math.nan, math.nan), Interval(0.4, 0.3, 0.6)) == Interval(
        0.5, 0.3, 0.6)
