"""The statistics behind every verdict: means, spreads, the CI of a difference, EDFs, KS.

Pure functions of plain sequences (numpy and scipy only), so the report, ``confirm`` and
``compare`` state noise the same way. The interval of a difference of means is Welch's
t interval (unequal variances, Welch-Satterthwaite degrees of freedom), the verdict word
comes from it alone, and the two-sample Kolmogorov-Smirnov test compares distributions.
A share (k of n) gets the exact Clopper-Pearson interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Confidence level of every interval rexsearch quotes.
CONFIDENCE = 0.95
BEATS = "beats"
TIES = "ties (difference within noise)"
LOSES = "loses"
UNTESTED = "not tested against noise (one training each)"
CI_METHOD = "95% Welch t interval of the difference of means (unequal variances)"


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (NaN for no values)."""
    return float(np.mean(values)) if len(values) else math.nan


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); NaN for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values``, linear between the two nearest order statistics."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its confidence interval and the verdict it supports."""

    mean_a: float
    std_a: float
    n_a: int
    mean_b: float
    std_b: float
    n_b: int
    diff: float
    low: float
    high: float
    verdict: str

    @property
    def tested(self) -> bool:
        """Whether both sides have at least two values (an interval exists)."""
        return self.verdict != UNTESTED


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float]:
    """Welch's t interval of ``mean(a) - mean(b)``; NaNs when a side has fewer than two values.

    Zero spread on both sides gives the point interval ``(d, d)`` (no noise was observed).
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    d = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, d
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return d - half, d + half


def verdict_word(low: float, high: float) -> str:
    """``beats`` when the interval is above 0, ``loses`` when below, else ``ties (...)``."""
    if math.isnan(low) or math.isnan(high):
        return UNTESTED
    if low > 0:
        return BEATS
    if high < 0:
        return LOSES
    return TIES


def difference(a: Sequence[float], b: Sequence[float], level: float = CONFIDENCE) -> Difference:
    """How ``a`` compares with ``b`` (larger is better): means, spreads, CI, verdict."""
    low, high = welch_interval(a, b, level)
    return Difference(
        mean(a),
        sample_std(a),
        len(a),
        mean(b),
        sample_std(b),
        len(b),
        mean(a) - mean(b),
        low,
        high,
        verdict_word(low, high),
    )


def share_interval(k: int, n: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of the rate behind ``k`` successes in ``n`` trials.

    It covers the rate with at least ``level`` probability whatever the rate (40 of 40 gives
    0.912-1; 37 of 40, 0.796-0.984).
    """
    from scipy import stats

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    tail = (1.0 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def edf(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The empirical distribution function as steps: sorted values and the fraction at most each."""
    x = np.sort(np.asarray(values, dtype=float))
    return x, np.arange(1, len(x) + 1) / max(len(x), 1)


@dataclass(frozen=True)
class KSResult:
    """The two-sample Kolmogorov-Smirnov statistic (largest EDF gap) and its p-value."""

    statistic: float
    pvalue: float


def ks_test(a: Sequence[float], b: Sequence[float]) -> KSResult:
    """scipy's two-sided two-sample KS test; NaNs when a side is empty."""
    from scipy import stats

    if not len(a) or not len(b):
        return KSResult(math.nan, math.nan)
    res = stats.ks_2samp(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return KSResult(float(res.statistic), float(res.pvalue))


def quantile_groups(values: Sequence[float], fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Indices of the top, middle and bottom ``fraction`` of ``values`` (at least one each).

    The middle group is centred on the median; with fewer than three values groups overlap.
    """
    order = np.argsort(-np.asarray(values, dtype=float), kind="stable")
    n = len(order)
    k = max(1, round(fraction * n))
    start = max(0, (n - k) // 2)
    return {"top": order[:k], "middle": order[start : start + k], "bottom": order[n - k :]}


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau-b between a predictor and a target, with a bootstrap interval over items."""

    tau: float
    low: float
    high: float
    n: int


#: Up to this many items :func:`kendall_tau` compares all pairs with numpy (exact, and fast
#: enough for bootstrap loops); beyond it, scipy's O(n log n) algorithm.
PAIRWISE_TAU_ITEMS = 1000


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired sequences (ties handled; NaN when either is constant)."""
    if len(x) != len(y):
        raise ValueError(f"paired sequences differ in length: {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan
    if len(x) > PAIRWISE_TAU_ITEMS:
        from scipy import stats

        return float(stats.kendalltau(x, y).statistic)
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sx = np.sign(xs[:, None] - xs[None, :])  # each pair twice: the factors of 2 cancel
    sy = np.sign(ys[:, None] - ys[None, :])
    untied_x, untied_y = float(np.abs(sx).sum()), float(np.abs(sy).sum())
    if not (untied_x > 0 and untied_y > 0):  # a constant side (or NaN): undefined
        return math.nan
    return float((sx * sy).sum()) / math.sqrt(untied_x * untied_y)


def bootstrap_statistic(
    statistic: Callable[..., float], columns: Sequence[np.ndarray], resamples: int, seed: int, level: float
) -> RankAgreement:
    """``statistic(*columns)`` and its percentile bootstrap interval over the items (rows)
    shared by ``columns``; resamples where it is undefined (NaN) are skipped."""
    n = len(columns[0])
    value = statistic(*columns)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples if n > 2 else 0):
        idx = rng.integers(0, n, n)
        d = statistic(*(c[idx] for c in columns))
        if not math.isnan(d):
            draws.append(d)
    if not draws:
        return RankAgreement(value, math.nan, math.nan, n)
    tail = (1.0 - level) / 2
    return RankAgreement(value, quantile(draws, tail), quantile(draws, 1.0 - tail), n)


def rank_agreement(
    x: Sequence[float],
    y: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
    level: float = CONFIDENCE,
) -> RankAgreement:
    """Kendall's tau-b of ``x`` against ``y`` with a percentile bootstrap interval.

    The items (pairs) are resampled with replacement ``resamples`` times from a seeded
    generator; resamples where tau is undefined (one side constant) are skipped.
    """
    columns = [np.asarray(x, dtype=float), np.asarray(y, dtype=float)]
    return bootstrap_statistic(kendall_tau, columns, resamples, seed, level)


def agreement_difference(
    a: Sequence[float],
    b: Sequence[float],
    y: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
    level: float = CONFIDENCE,
) -> RankAgreement:
    """``tau(a, y) - tau(b, y)``, two predictors of the same target, with a paired percentile
    bootstrap interval (the same resampled items for both, so their shared noise cancels)."""
    columns = [np.asarray(v, dtype=float) for v in (a, b, y)]

    def diff(xa: np.ndarray, xb: np.ndarray, ys: np.ndarray) -> float:
        return kendall_tau(xa, ys) - kendall_tau(xb, ys)

    return bootstrap_statistic(diff, columns, resamples, seed, level)
