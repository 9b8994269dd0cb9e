"""The latency budget and its margins: budget strings, the auto and the measured margin.

Everything runs on tiny networks at 32x32 with coarse tables; no assertion is about time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import types

import pytest
from support.latency import RES, TINY_SPACE, draw_shapes

from rexsearch.cli import main
from rexsearch.errors import BudgetError, UserError
from rexsearch.latency import (
    LatencyTableError,
    auto_margin,
    conformal_margin,
    fit_table_correction,
    held_out_ratios,
    load_table,
    measured_margin,
    parse_latency_budget,
)
from rexsearch.space import Budget


@pytest.mark.parametrize(("text", "ms"), [("12ms", 12.0), ("0.012s", 12.0), ("12", 12.0), ("500us", 0.5)])
def test_latency_budget_strings(text, ms):
    assert parse_latency_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["12qs", "ms", "-3ms", "0", "twelve"])
def test_bad_latency_budget_strings(text):
    with pytest.raises(BudgetError, match="--latency-budget"):
        parse_latency_budget(text)


def _with_calibration(table, n: int, spread: float):
    """``table`` with ``n`` plain calibration rows on 0.5 + 1.2 x summed, each off it by up to
    ``spread`` (deterministic, evenly spread)."""
    rows = []
    for k in range(n):
        summed = 1.0 + 0.25 * k
        off = spread * (((7 * k) % n) / (n - 1) - 0.5) * 2 if n > 1 else 0.0
        median = (0.5 + 1.2 * summed) * (1.0 + off)
        rows.append({"name": f"cal-{k}", "summed_ms": summed, "measured_ms": median, "median_ms": median})
    return dataclasses.replace(table, correction=fit_table_correction(rows))


def test_auto_margin_keeps_95_percent_of_held_out_calibration_networks_within_the_budget(table):
    noisy = _with_calibration(table, 24, 0.1)
    margin = auto_margin(noisy)
    ratios = held_out_ratios(noisy)
    assert 0.05 < margin < 0.2 and max(ratios) > 1.05
    within = sum(r <= 1 / (1 - margin) + 1e-12 for r in ratios)
    assert within == math.ceil(25 * 0.95) == 24  # the conformal rank: here the worst of 24
    many = _with_calibration(table, 60, 0.1)
    wide = auto_margin(many)
    assert sum(r <= 1 / (1 - wide) + 1e-12 for r in held_out_ratios(many)) == math.ceil(61 * 0.95) == 58
    assert auto_margin(_with_calibration(table, 24, 0.0)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(LatencyTableError, match="19 or more calibration networks, this one has 18"):
        auto_margin(_with_calibration(table, 18, 0.1))


def test_latency_margin_auto_on_the_command_line(table, space, tmp_path, capsys):
    noisy = _with_calibration(table, 24, 0.1)
    path = tmp_path / "table.json"
    noisy.save(path)
    margin = auto_margin(load_table(path))
    space_path = tmp_path / "tiny.yaml"
    space_path.write_text(TINY_SPACE)
    budget = noisy.predict(draw_shapes(space, 1)[1]) * 1.5
    argv = ["space", str(space_path), "--latency-table", str(path), "--latency-budget", f"{budget}ms"]
    argv += ["--resolution", "32", "--sample", "3", "--json"]
    assert main([*argv, "--latency-margin", "auto"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3
    assert all(0.97 * budget * (1 - margin) <= r["latency_ms"] <= budget * (1 - margin) for r in rows)
    for bad in ("lots", "1.5", "nan"):
        assert main([*argv, "--latency-margin", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--latency-margin" in err
    assert main(["latency-table", "show", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["auto_margin"] == pytest.approx(margin)
    table.save(path)  # 3 calibration networks: too few for auto, and show says nothing of it
    assert main([*argv, "--latency-margin", "auto"]) == 2
    assert "19 or more calibration networks" in capsys.readouterr().err
    assert main(["latency-table", "show", str(path)]) == 0
    assert "latency-margin auto" not in capsys.readouterr().out


def test_measured_margin_times_the_spaces_candidates_at_the_budget(table, space, monkeypatch):
    import rexsearch.latency.margin as margin_module

    budget = Budget(
        resolution=RES,
        latency_ms=table.predict(draw_shapes(space, 1)[1]) * 1.5,
        latency_table=table,
        latency_margin=0.3,  # ignored: the candidates are decoded at the budget itself
    )
    timed = []

    def fake(config, resolution, env, warmup, repeats):  # slower than predicted, by 0.90-1.14x
        timed.append(config)
        factor = 0.9 + 0.24 * ((7 * len(timed)) % 20) / 19
        return types.SimpleNamespace(median_ms=factor * table.predict(config, resolution))

    monkeypatch.setattr(margin_module, "measure_latency", fake)
    found = measured_margin(space, budget)
    assert len(timed) == len(found.ratios) == 20
    assert all(0.97 * budget.latency_ms <= table.predict(c, RES) <= budget.latency_ms for c in timed)
    assert found.ratios == pytest.approx([0.9 + 0.24 * ((7 * k) % 20) / 19 for k in range(1, 21)])
    # the conformal rank of 20 at 95% is the 20th: the slowest candidate, 1.14x, sets the margin
    assert found.margin == pytest.approx(1 - 1 / 1.14) == pytest.approx(conformal_margin(found.ratios))
    assert found.describe().startswith(f"latency margin {found.margin:.1%}: 20 candidates of tiny")
    with pytest.raises(UserError, match="19 or more candidates"):
        measured_margin(space, budget, candidates=18)
    with pytest.raises(UserError, match="needs --latency-budget"):
        measured_margin(space, Budget(macs=1_000_000, resolution=RES))
    tight = dataclasses.replace(budget, latency_ms=budget.latency_ms / 1.5 * 0.2)
    with pytest.raises(UserError, match="of the 20 candidates it times fit"):
        measured_margin(space, tight)


def test_conformal_margin_reads_the_conformal_rank():
    ratios = [1.0 + k / 100 for k in range(40)]  # 1.00 ... 1.39
    random.Random(0).shuffle(ratios)
    assert conformal_margin(ratios) == pytest.approx(1 - 1 / 1.38)  # ceil(41 x 0.95) = 39th smallest
    assert conformal_margin(ratios[:20]) == pytest.approx(1 - 1 / max(ratios[:20]))  # 20: the largest
    assert conformal_margin([0.8, 0.9] * 10) == 0.0  # all faster than predicted: no margin
    with pytest.raises(ValueError, match="needs 19 or more ratios"):
        conformal_margin(ratios[:18])


def test_latency_margin_measure_on_the_command_line(table, space, tmp_path, capsys, monkeypatch):
    import rexsearch.latency.margin as margin_module

    def slower(config, resolution, env, warmup, repeats):  # every candidate 1.25x its prediction
        return types.SimpleNamespace(median_ms=1.25 * table.predict(config, resolution))

    monkeypatch.setattr(margin_module, "measure_latency", slower)
    path = tmp_path / "table.json"
    table.save(path)
    space_path = tmp_path / "tiny.yaml"
    space_path.write_text(TINY_SPACE)
    budget = table.predict(draw_shapes(space, 1)[1]) * 1.5
    argv = ["space", str(space_path), "--latency-table", str(path), "--latency-budget", f"{budget}ms"]
    argv += ["--resolution", "32", "--sample", "3", "--json", "--latency-margin", "measure"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    said = captured.err.strip().splitlines()
    assert said[0] == "timing 20 candidates of tiny for --latency-margin measure ..."
    assert len(said) == 2 and said[1].startswith("latency margin 20.0%: 20 candidates of tiny")
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 3  # decoded under the budget less 20%, within its 3% window
    assert all(0.97 * 0.8 * budget <= r["latency_ms"] <= 0.8 * budget for r in rows)
