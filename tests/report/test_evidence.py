"""The committed studies' numbers that reports quote, and the report's rank verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rexsearch.report.evidence import FIDELITY_STUDY, fidelity_evidence
from rexsearch.report.html import rank_verdict
from rexsearch.stats import RankAgreement

AGREEMENT = Path(__file__).resolve().parents[2] / "reports" / "fidelity" / "agreement.json"


def test_quoted_fidelity_numbers_are_the_committed_study_s():
    rows = {r["predictor"]: r for r in json.loads(AGREEMENT.read_text())}
    setup = json.loads((AGREEMENT.parent / "setup.json").read_text())
    assert FIDELITY_STUDY["dataset"] == setup["dataset"]
    assert FIDELITY_STUDY["networks"] == rows["rank"]["networks"] == setup["configs"] + 2
    for key, quoted in FIDELITY_STUDY["tau"].items():
        row = rows[key]
        assert (quoted.tau, quoted.low, quoted.high) == pytest.approx(
            (row["tau"], row["low"], row["high"]), abs=5e-4
        ), key


def test_evidence_names_its_data_set_and_says_when_it_is_another():
    same = fidelity_evidence("fashion-mnist")
    other = fidelity_evidence("cifar100")
    assert "(Fashion-MNIST;" in same and "not this run's data set" not in same
    assert "(Fashion-MNIST, not this run's data set;" in other
    assert "rank objective ranked networks at Kendall tau 0.25 [-0.06, 0.54], params at 0.00" in other
    assert "did not beat params or MACs beyond noise" in other
    assert "(Fashion-MNIST; this run trained on no data;" in fidelity_evidence(None)


def test_calibration_has_no_interval_or_verdict_on_a_handful_of_trials():
    import numpy as np
    import pandas as pd

    from rexsearch.report.analysis import MIN_INTERVAL_TRIALS, correlations, tau_differences

    def frame(n: int) -> pd.DataFrame:  # rank orders accuracy perfectly, the costs do not
        order = np.arange(n, dtype=float)
        return pd.DataFrame({"rank": order, "accuracy": order, "macs": order[::-1] % 3, "params": order % 2})

    few, enough = frame(MIN_INTERVAL_TRIALS - 1), frame(MIN_INTERVAL_TRIALS)
    assert correlations(few, "accuracy", ["rank"])[0]["tau"] == pytest.approx(1.0)
    assert "tau_low" not in correlations(few, "accuracy", ["rank"])[0]
    assert tau_differences(few, "rank", "accuracy", ["macs", "params"]) == {}
    assert correlations(enough, "accuracy", ["rank"])[0]["tau_low"] == pytest.approx(1.0)
    assert set(tau_differences(enough, "rank", "accuracy", ["macs", "params"])) == {"macs", "params"}


def _agreement(tau: float, low: float, high: float) -> RankAgreement:
    return RankAgreement(tau, low, high, 20)


@pytest.mark.parametrize(
    ("intervals", "word"),
    [
        (
            {"macs": (0.3, 0.1, 0.5), "params": (0.2, 0.05, 0.4)},
            "rank is better than MACs and parameters beyond noise",
        ),
        (
            {"macs": (0.3, 0.1, 0.5), "params": (0.1, -0.1, 0.3)},
            "rank is better than MACs beyond noise and not better than parameters beyond noise",
        ),
        (
            {"macs": (0.1, -0.2, 0.4), "params": (0.0, -0.3, 0.3)},
            "rank is not better than MACs or parameters",
        ),
        (
            {"macs": (-0.4, -0.6, -0.1), "params": (0.0, -0.3, 0.3)},
            "rank is not better than parameters beyond noise and worse than MACs beyond noise",
        ),
    ],
)
def test_rank_verdict_reads_the_paired_intervals(intervals, word):
    text = rank_verdict({k: _agreement(*v) for k, v in intervals.items()})
    assert word in text
    assert "rank minus MACs: " in text and "rank minus parameters: " in text


def test_rank_verdict_is_silent_without_a_comparison():
    assert rank_verdict({}) == ""
