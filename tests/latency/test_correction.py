"""The correction fitted on whole networks: one line, per kind, per weight, per operator and per
converted element.

Everything runs on tiny networks at 32x32 with coarse tables; no assertion is about time.
"""

from __future__ import annotations

import json
import random

import pytest
from support.latency import RES, draw_shapes

from rexsearch.latency import (
    KINDS,
    MIN_KIND_CALIBRATION,
    Correction,
    LatencyTableError,
    build_table,
    fit_kind_correction,
    fit_table_correction,
    fit_terms,
    load_table,
)


def test_kind_correction_recovers_per_kind_costs():
    rng = random.Random(0)
    truth = (0.4, (1.3, 0.7, 2.0, 0.0, 1.0, 1.1), 0.01)  # intercept, per kind, per operator
    comps, measured = [], []
    for _ in range(30):
        c = [rng.uniform(0.1, 5.0) for _ in KINDS] + [rng.randint(20, 120)]
        comps.append(c)
        measured.append(truth[0] + sum(w * v for w, v in zip(truth[1], c, strict=False)) + truth[2] * c[-1])
    fit = fit_kind_correction(comps, measured)
    assert fit.intercept_ms == pytest.approx(truth[0], abs=1e-6)
    assert fit.kind_slopes == pytest.approx(truth[1], abs=1e-6)
    assert fit.per_op_ms == pytest.approx(truth[2], abs=1e-8)
    assert fit.apply(comps[3]) == pytest.approx(measured[3])
    noisy = [m * rng.uniform(0.9, 1.2) for m in measured]
    fit = fit_kind_correction(comps, noisy)
    assert min(fit.kind_slopes) >= 0 and fit.intercept_ms >= 0 and fit.per_op_ms >= 0
    assert Correction.from_dict(fit.to_dict()) == fit
    assert "x conv" in fit.describe() and "operators" in fit.describe()


def test_table_with_enough_calibration_networks_fits_per_kind(space, tmp_path):
    shapes = draw_shapes(space, 6, seed=2)
    assert len(shapes) >= MIN_KIND_CALIBRATION
    line = build_table(threads=1, resolution=RES, shapes=shapes[:4], points=2, warmup=1, repeats=1)
    assert not line.correction.kind_slopes and line.correction.slope > 0  # the default: one line
    table = build_table(
        threads=1, resolution=RES, shapes=shapes, points=2, warmup=1, repeats=1, correction="kinds"
    )
    c = table.correction
    assert len(c.kind_slopes) == len(KINDS) and len(c.calibration) >= MIN_KIND_CALIBRATION
    assert all("components" in r for r in c.calibration)
    path = tmp_path / "kinds.json"
    table.save(path)
    again = load_table(path)
    assert again.correction == c
    for config in shapes[:4]:
        assert again.predict(config) == pytest.approx(c.apply(table.components(config)), rel=1e-12)
        assert again.predict(config) > 0
    data = json.loads(path.read_text())
    data["correction"]["kinds"] = ["conv"]
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="damaged"):
        load_table(path)


def test_weights_line_recovers_a_cost_per_weight_and_stays_monotone():
    rng = random.Random(4)
    summed = [rng.uniform(2, 40) for _ in range(36)]
    weights = [rng.uniform(0.5, 12) for _ in range(36)]
    measured = [0.6 + 0.9 * s + 0.45 * w for s, w in zip(summed, weights, strict=True)]
    intercept, slope, (per_mweight,) = fit_terms(summed, [weights], measured)
    assert (intercept, slope, per_mweight) == pytest.approx((0.6, 0.9, 0.45), abs=1e-6)
    # weights that make a network faster are not fitted: every coefficient stays >= 0
    falling = [0.6 + 0.9 * s - 0.3 * w + 5 for s, w in zip(summed, weights, strict=True)]
    intercept, slope, (per_mweight,) = fit_terms(summed, [weights], falling)
    assert min(intercept, slope, per_mweight) >= 0 and slope > 0
    rows = [
        {"summed_ms": s, "measured_ms": m, "components": [s, 0, 0, 0, 0, 0, 10, w]}
        for s, w, m in zip(summed, weights, measured, strict=True)
    ]
    c = fit_table_correction(rows)
    assert c.per_mweight_ms == pytest.approx(0.45, abs=1e-6) and "M weights" in c.describe()
    assert c.apply(rows[0]["components"]) == pytest.approx(measured[0])
    assert Correction.from_dict(c.to_dict()) == c
    old = fit_table_correction([{**r, "components": r["components"][:7]} for r in rows])
    assert old.per_mweight_ms == 0.0  # rows of an older table: the plain line
    assert fit_table_correction(rows[:5]).per_mweight_ms == 0.0  # too few rows for three terms


def test_line_recovers_a_cost_per_operator_and_predicts_with_it():
    # eager torch pays per operator beyond the operators' own timings: a network of many small
    # operators is slower than its sum says, one of few large operators less so
    rng = random.Random(5)
    rows = []
    for _ in range(36):
        summed, weights, operators = rng.uniform(2, 40), rng.uniform(0.5, 12), rng.randint(20, 200)
        median = 0.3 + 1.05 * summed + 0.2 * weights + 0.05 * operators
        rows.append(
            {
                "summed_ms": summed,
                "measured_ms": median,
                "median_ms": median,
                "components": [summed, 0, 0, 0, 0, 0, operators, weights],
            }
        )
    c = fit_table_correction(rows)
    assert (c.intercept_ms, c.slope, c.per_mweight_ms, c.per_op_ms) == pytest.approx(
        (0.3, 1.05, 0.2, 0.05), abs=1e-6
    )
    assert "us x operators" in c.describe() and Correction.from_dict(c.to_dict()) == c
    few = [1.0, 0, 0, 0, 0, 0, 20, 1.0]
    assert c.apply([1.0, 0, 0, 0, 0, 0, 180, 1.0]) - c.apply(few) == pytest.approx(0.05 * 160)
    _, slope, (per_mweight, per_op) = fit_terms(
        [r["summed_ms"] for r in rows], [[0.0] * 36, [0.0] * 36], [r["median_ms"] for r in rows]
    )
    assert per_mweight == per_op == 0.0 and slope > 0  # zero columns: no term


def test_line_recovers_a_cost_per_converted_element_and_older_rows_fit_without_it():
    rng = random.Random(6)
    rows = []
    for _ in range(36):
        summed, weights, moved = rng.uniform(2, 40), rng.uniform(0.5, 12), rng.uniform(0.0, 6.0)
        operators = rng.randint(20, 200)
        median = 0.2 + 1.0 * summed + 0.1 * weights + 0.6 * moved
        rows.append(
            {
                "summed_ms": summed,
                "measured_ms": median,
                "median_ms": median,
                "components": [summed, 0, 0, 0, 0, 0, operators, weights, moved],
            }
        )
    c = fit_table_correction(rows)
    assert (c.intercept_ms, c.slope, c.per_mweight_ms, c.per_mconversion_ms) == pytest.approx(
        (0.2, 1.0, 0.1, 0.6), abs=1e-6
    )
    assert "M converted" in c.describe() and Correction.from_dict(c.to_dict()) == c
    base = [10.0, 0, 0, 0, 0, 0, 50, 1.0, 0.0]
    assert c.apply([*base[:8], 2.5]) - c.apply(base) == pytest.approx(0.6 * 2.5)
    assert c.apply(base[:8]) == pytest.approx(c.apply(base))  # a row of an older table: none converted
    old = fit_table_correction([{**r, "components": r["components"][:8]} for r in rows])
    assert old.per_mconversion_ms == 0.0
    kinds = fit_table_correction(rows, "kinds")
    assert kinds.per_mconversion_ms == pytest.approx(0.6, abs=1e-3)
