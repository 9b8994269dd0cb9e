"""The statistics every verdict rests on, checked against scipy on known samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from rexsearch import stats

A = [0.712, 0.705, 0.721, 0.698, 0.715]
B = [0.690, 0.702, 0.681, 0.695]


def test_welch_interval_matches_scipy():
    low, high = stats.welch_interval(A, B)
    ref = sps.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert low == pytest.approx(ref.low, rel=1e-12)
    assert high == pytest.approx(ref.high, rel=1e-12)


def test_difference_fields_and_words():
    d = stats.difference(A, B)
    assert d.mean_a == pytest.approx(np.mean(A)) and d.std_a == pytest.approx(np.std(A, ddof=1))
    assert d.n_a == 5 and d.n_b == 4 and d.diff == pytest.approx(np.mean(A) - np.mean(B))
    assert d.verdict == stats.BEATS
    assert stats.difference(B, A).verdict == stats.LOSES
    noisy = stats.difference([0.70, 0.74, 0.66], [0.71, 0.69, 0.70])
    assert noisy.verdict == stats.TIES and noisy.low < 0 < noisy.high


def test_identical_results_tie():
    same = [0.7, 0.7, 0.7]
    d = stats.difference(same, list(same))
    assert d.verdict == stats.TIES and d.diff == 0.0 and d.low <= 0.0 <= d.high
    seeds = [0.61, 0.64, 0.62]
    assert stats.difference(seeds, list(seeds)).verdict == stats.TIES


def test_single_trainings_are_not_tested():
    d = stats.difference([0.8], [0.7])
    assert d.verdict == stats.UNTESTED and not d.tested and math.isnan(d.low)


def test_edf_and_ks():
    x, y = stats.edf([3.0, 1.0, 2.0])
    assert list(x) == [1.0, 2.0, 3.0] and list(y) == pytest.approx([1 / 3, 2 / 3, 1.0])
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 40), rng.normal(1, 1, 40)
    ks = stats.ks_test(a, b)
    ref = sps.ks_2samp(a, b)
    assert ks.statistic == pytest.approx(ref.statistic) and ks.pvalue == pytest.approx(ref.pvalue)


def test_quantile_groups():
    values = list(range(20))
    g = stats.quantile_groups(values)
    assert sorted(np.asarray(values)[g["top"]]) == [18, 19]
    assert sorted(np.asarray(values)[g["bottom"]]) == [0, 1]
    assert len(g["middle"]) == 2


def test_share_interval_is_clopper_pearson():
    # the all-successes and no-success bounds have closed forms: (tail)^(1/n) and 1 - (tail)^(1/n)
    assert stats.share_interval(40, 40) == (pytest.approx(0.025 ** (1 / 40)), 1.0)
    assert stats.share_interval(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10)))
    low, high = stats.share_interval(37, 40)
    ref = sps.binomtest(37, 40).proportion_ci(0.95, method="exact")
    assert (low, high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert low < 37 / 40 < high
    with pytest.raises(ValueError):
        stats.share_interval(5, 4)


def test_share_verdict_needs_enough_trials():
    from rexsearch import bench

    assert bench.share_verdict(40, 40, 0.95) == bench.GOAL_UNDECIDED  # lower bound 0.912
    assert bench.share_verdict(37, 40, 0.95) == bench.GOAL_UNDECIDED
    assert bench.share_verdict(20, 40, 0.95) == bench.GOAL_MISSED
    # all of n within: the lower bound 0.025 ** (1 / n) reaches 0.95 at n = 72
    n = math.ceil(math.log(0.025) / math.log(0.95))
    assert bench.share_verdict(n, n, 0.95) == bench.GOAL_MET
    assert bench.share_verdict(n - 1, n, 0.95) != bench.GOAL_MET


def test_quantile_interpolates_between_order_statistics():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert stats.quantile(values, 0.0) == 1.0 and stats.quantile(values, 1.0) == 5.0
    assert stats.quantile(values, 0.5) == 3.0
    assert stats.quantile(values, 0.9) == pytest.approx(float(np.quantile(values, 0.9)))
    assert stats.quantile([7.0], 0.25) == 7.0


def test_kendall_tau_and_its_bootstrap_interval():
    from rexsearch.stats import kendall_tau, rank_agreement

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))  # one side constant: undefined
    # tau-b with ties, as scipy computes it, on both sides of the pairwise/scipy switch
    rng = np.random.default_rng(1)
    for n in (5, 40, 1500):
        x, y = rng.integers(0, 6, n), rng.integers(0, 4, n) + 0.1 * rng.integers(0, 2, n)
        assert kendall_tau(x, y) == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    strong = rank_agreement(x, x + 0.3 * rng.normal(size=40), resamples=500)
    none = rank_agreement(x, rng.normal(size=40), resamples=500)
    assert strong.n == 40 and strong.low <= strong.tau <= strong.high and strong.low > 0.4
    assert none.low < 0 < none.high  # no agreement: the interval straddles zero
    assert rank_agreement(x, x, resamples=200, seed=1) == rank_agreement(x, x, resamples=200, seed=1)
    with pytest.raises(ValueError, match="differ in length"):
        kendall_tau([1, 2], [1, 2, 3])


def test_paired_difference_of_two_predictors():
    from rexsearch.stats import agreement_difference

    rng = np.random.default_rng(3)
    y = rng.normal(size=40)
    good, noise = y + 0.3 * rng.normal(size=40), rng.normal(size=40)
    d = agreement_difference(good, noise, y, resamples=500)
    assert d.tau > 0.4 and d.low > 0  # the good predictor beats noise beyond the interval
    same = agreement_difference(good, good, y, resamples=100)
    assert (same.tau, same.low, same.high) == (0.0, 0.0, 0.0)  # paired: identical predictors tie exactly
