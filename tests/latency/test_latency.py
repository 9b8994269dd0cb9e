"""Latency measurement, the per-operator table, the predictor and latency/channel-multiple budgets.

Everything runs on tiny networks at 32x32 with coarse tables; no assertion is about time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import types

import pytest

from rexsearch.allocator import steady_allocator
from rexsearch.cli import main
from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost
from rexsearch.errors import BudgetError, UserError
from rexsearch.latency import (
    ACT_CONTEXTS,
    BLOCKED,
    KINDS,
    MIN_AUTO_MARGIN_CALIBRATION,
    MIN_KIND_CALIBRATION,
    MIN_WEIGHTS_CALIBRATION,
    PLAIN_INPUT_BELOW,
    Correction,
    Environment,
    Family,
    InContext,
    LatencyTable,
    LatencyTableError,
    auto_margin,
    build_table,
    channel_grid,
    check_drift,
    config_ops,
    config_segments,
    conformal_margin,
    environment,
    fit_kind_correction,
    fit_table_correction,
    fit_terms,
    fold_batchnorm,
    held_out_ratios,
    in_context_ms,
    load_table,
    measure_latency,
    measured_margin,
    monotone_envelope,
    node_times,
    op_weights,
    parse_latency_budget,
    probe_blocked_alignment,
    probe_plain_input_below,
    segment_conversions,
    table_families,
)
from rexsearch.principles import get_preset
from rexsearch.space import (
    Budget,
    Candidate,
    RandomTrial,
    calibration_networks,
    check_feasible,
    load_space,
    parse_space,
)

RES = 32
TINY_SPACE = """
format: rexsearch.space/1
name: tiny
generator: linear
fixed:
  depth_mult: 0.25
  activation: silu
  dw_activation: relu6
  expansion: 3
  se_ratio: 4
  penultimate: 64
  num_classes: 10
  stem: 8
variables:
  start: {low: 8, high: 16}
  growth: {low: 20, high: 60}
  expand_fraction: {low: 0.5, high: 1.0}
"""
LATENCY_KEYS = {
    "median_ms",
    "spread_ms",
    "min_ms",
    "p90_ms",
    "repeats",
    "warmup",
    "resolution",
    "batch",
    "bn_folded",
    "settings",
}
SETTINGS_KEYS = {"device", "device_name", "runtime", "runtime_version", "threads", "batch"}


@pytest.fixture(scope="module")
def space():
    return parse_space(TINY_SPACE, "tiny.yaml")


def _shapes(space, n=4, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        values = space.suggest(RandomTrial(rng))
        out += [space.build(values, w) for w in (0.25, 1.0, 3.0)]
    return out


def _tiny_table(shapes, **options):
    """A coarse table of ``shapes`` at RES (the first two its calibration networks)."""
    settings = {"threads": 1, "resolution": RES, "calibration": shapes[:2], "warmup": 1, "repeats": 1}
    return build_table(shapes=shapes, **{**settings, **options})


@pytest.fixture(scope="module")
def table(space):
    shapes = _shapes(space)
    return build_table(
        threads=1,
        resolution=RES,
        shapes=shapes,
        calibration=shapes[1::3][:3],
        points=3,
        warmup=1,
        repeats=2,
        activations=("silu", "relu6", "relu"),
    )


def test_measurement_is_positive_in_a_stable_format(space):
    config = _shapes(space, 1)[1]
    result = measure_latency(config, RES, threads=1, warmup=1, repeats=3)
    out = result.to_dict()
    assert set(out) == LATENCY_KEYS and set(out["settings"]) == SETTINGS_KEYS
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms and result.spread_ms >= 0
    assert out["settings"]["runtime"] == "torch" and out["settings"]["threads"] == 1
    assert out["resolution"] == RES and out["bn_folded"] is True


def test_onnxruntime_measurement(space):
    pytest.importorskip("onnxruntime")
    result = measure_latency(_shapes(space, 1)[0], RES, runtime="onnxruntime", threads=1, warmup=1, repeats=3)
    assert result.median_ms > 0 and result.environment.runtime == "onnxruntime"


def test_cli_latency_json(tmp_path, space, capsys):
    path = tmp_path / "tiny.json"
    _shapes(space, 1)[0].save(path)
    argv = ["latency", "--config", str(path), "--resolution", "32", "--threads", "1", "--warmup", "1"]
    assert main([*argv, "--repeats", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["median_ms"] > 0 and set(out) == LATENCY_KEYS | {"config"}


def test_table_round_trips_through_its_file(table, space, tmp_path):
    path = tmp_path / "table.json"
    table.save(path)
    again = load_table(path, expect=table.environment)
    assert again == table
    for config in _shapes(space, 3, seed=5):
        assert again.predict(config) == pytest.approx(table.predict(config), rel=1e-12)
        assert table.predict(config) > 0


def test_a_copy_of_a_table_predicts_from_its_own_times(table, space):
    """``dataclasses.replace`` (as ``bench_latency_ab.py score --unblocked`` makes a copy) must
    not hand the copy the original's cached operator and block times, nor take the copy's."""
    configs = _shapes(space, 2, seed=7)
    before = [table.summed_ms(c) for c in configs]  # fills the caches
    doubled = {k: dataclasses.replace(f, ms=tuple(2 * v for v in f.ms)) for k, f in table.families.items()}
    copy = dataclasses.replace(table, families=doubled)
    assert [copy.summed_ms(c) for c in configs] == pytest.approx([2 * b for b in before], rel=1e-12)
    assert [table.summed_ms(c) for c in configs] == before


def _shortcuts(config):
    """Each block's shortcut: none, a full add (in = out) or a partial one (in < out)."""
    return tuple(
        "none" if not config.uses_shortcut(b) else "full" if b.in_channels == b.out_channels else "partial"
        for b in config.blocks
    )


def test_prediction_is_monotone_in_width(table, space):
    # A width step can turn a block's partial shortcut into a full one (in = out: another
    # operator, timed in its own family), so the prediction, like the network, can step down
    # there; between such steps it never does.
    rng = random.Random(3)
    steps = 0
    for _ in range(4):
        values = space.suggest(RandomTrial(rng))
        predicted = []
        for w in (0.05 * 1.1**i for i in range(50)):  # far below and above the measured grid
            try:
                config = space.build(values, w)
            except UserError:  # too narrow to be valid
                continue
            predicted.append((_shortcuts(config), table.predict(config)))
        assert len(predicted) > 30
        for (kinds_a, a), (kinds_b, b) in itertools.pairwise(predicted):
            if kinds_a == kinds_b:
                steps += 1
                assert b >= a
        assert predicted[-1][1] > predicted[0][1]
    assert steps > 100  # most steps keep the shortcuts


def _assert_monotone(family, rng, points=30):
    for _ in range(points):
        point = [rng.uniform(0.5, 2 * a[-1]) for a in family.axes]
        base = family.value(tuple(point))
        for axis in range(len(family.axes)):
            bigger = list(point)
            bigger[axis] *= 1.3
            assert family.value(tuple(bigger)) >= base - 1e-12


def test_interpolation_is_monotone_on_any_measured_grid():
    rng = random.Random(0)
    for _ in range(300):
        axes = tuple(
            channel_grid(rng.randint(1, 50), rng.randint(50, 3000), rng.randint(2, 6)) for _ in range(2)
        )
        raw = [rng.random() for _ in range(len(axes[0]) * len(axes[1]))]  # noisy, not monotone
        _assert_monotone(Family("conv", (1, 1, 7), axes, tuple(monotone_envelope(axes, raw))), rng)
        axis = axes[1]
        _assert_monotone(
            Family("dw", (3, 1, 7), (axis,), tuple(monotone_envelope((axis,), raw[: len(axis)]))), rng
        )


def test_every_operator_family_is_monotone(table):
    rng = random.Random(1)
    for family in table.families.values():
        _assert_monotone(family, rng)


def test_ops_mirror_the_model(space):
    config = _shapes(space, 1)[1]
    ops = config_ops(config, RES)
    convs = [op for op in ops if op[0] == "conv"]
    assert convs[0] == ("conv", (3, config.stem_stride, RES), (3, config.stem_channels))
    assert sum(op[0] == "dw" for op in ops) == config.depth
    assert ops[-1] == ("classifier", (1, 10), (config.penultimate_channels,))


def test_components_are_the_operator_sum_by_kind(table, space):
    for config in _shapes(space, 2, seed=9):
        ops = config_ops(config, RES)
        parts = table.components(config)
        assert parts[len(KINDS)] == len(ops)
        assert parts[len(KINDS) + 1] == pytest.approx(sum(op_weights(op) for op in ops) / 1e6)
        for i, kind in enumerate(KINDS):
            assert parts[i] == pytest.approx(sum(table.op_ms(op) for op in ops if op[0] == kind), rel=1e-12)
        assert table.components(config) == parts  # from the segment cache
        assert table.summed_ms(config) == pytest.approx(sum(parts[: len(KINDS)]), rel=1e-12)


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
    shapes = _shapes(space, 6, seed=2)
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


def test_tiny_latency_budget_refuses_with_smallest_reachable_latency(table, space):
    budget = Budget(latency_ms=1e-5, latency_table=table, resolution=RES)
    with pytest.raises(UserError, match=r"smallest reachable latency is [\d.]+ ms predicted"):
        check_feasible(space, budget)


def test_latency_budget_alone_keeps_candidates_inside(table, space):
    reference = table.predict(_shapes(space, 1)[1])
    budget = Budget(latency_ms=reference, latency_table=table, resolution=RES)
    candidates = space.sample(budget, 10, seed=2)
    assert len(candidates) == 10
    for c in candidates:
        assert c.latency_ms == pytest.approx(table.predict(c.config))
        assert 0.97 * reference <= c.latency_ms <= reference
        assert c.to_dict()["latency_ms"] == c.latency_ms
        assert c.cost == count_cost(c.config, RES)  # counted once, for the candidate found
    # the solve skips MACs counting under a latency budget alone: with a params budget that
    # never binds (which counts every width tried) it must find the same candidates
    counted = Budget(params=10**12, latency_ms=reference, latency_table=table, resolution=RES)
    assert [c.config for c in space.sample(counted, 10, seed=2)] == [c.config for c in candidates]


def test_latency_and_macs_budgets_together(table, space):
    config = _shapes(space, 1)[1]
    macs = count_cost(config, RES).macs
    latency = table.predict(config)
    budget = Budget(macs, latency_ms=latency * 0.8, latency_table=table, resolution=RES)
    for c in space.sample(budget, 8, seed=4):
        assert c.cost.macs <= macs and c.latency_ms <= latency * 0.8
        assert c.cost.macs >= budget.lower or c.latency_ms >= 0.97 * latency * 0.8
    margin = Budget(latency_ms=latency, latency_table=table, resolution=RES, latency_margin=0.1)
    assert all(c.latency_ms <= 0.9 * latency for c in space.sample(margin, 5, seed=4))


def test_table_from_another_device_or_runtime_is_refused_naming_both(table, tmp_path):
    path = tmp_path / "table.json"
    table.save(path)
    data = json.loads(path.read_text())
    data["environment"].update(device_name="Other CPU 9000", runtime="onnxruntime", runtime_version="1.0")
    path.write_text(json.dumps(data))
    here = environment("cpu", "torch", threads=1)
    with pytest.raises(LatencyTableError) as info:
        load_table(path, expect=here)
    message = str(info.value)
    assert "Other CPU 9000" in message and "onnxruntime 1.0" in message
    assert here.device_name in message and f"torch {here.runtime_version}" in message
    assert "--runtime torch" in message


def test_missing_family_is_refused(table):
    wide = ReXNetConfig.from_dict({**_config_dict(), "blocks": [dict(_config_dict()["blocks"][0], kernel=7)]})
    with pytest.raises(LatencyTableError, match="no dw operators"):
        table.predict(wide)


def _config_dict():
    return {
        "stem_channels": 8,
        "blocks": [
            {"in_channels": 8, "out_channels": 16, "expansion": 3, "kernel": 3, "stride": 2, "se": False}
        ],
        "penultimate_channels": 64,
        "num_classes": 10,
    }


@pytest.mark.parametrize("multiple", [8, 16])
def test_channel_multiple_rounds_every_width_inside_the_budget(table, space, multiple):
    reference = table.predict(_shapes(space, 1)[1])
    budget = Budget(
        latency_ms=reference * 1.5, latency_table=table, resolution=RES, channel_multiple=multiple
    )
    for c in space.sample(budget, 6, seed=1):
        widths = [c.config.stem_channels, c.config.penultimate_channels, *c.config.out_channels]
        assert all(w % multiple == 0 for w in widths)
        assert c.latency_ms <= reference * 1.5


@pytest.mark.parametrize("name", ["rexnet", "mobilenetv2", "piecewise"])
def test_channel_multiple_with_macs_budget_on_shipped_spaces(name):
    budget = Budget(400_000_000, channel_multiple=8)
    for c in load_space(name).sample(budget, 10, seed=0):
        widths = [c.config.stem_channels, c.config.penultimate_channels, *c.config.out_channels]
        assert all(w % 8 == 0 for w in widths)
        assert budget.lower <= c.cost.macs <= budget.macs
        assert count_cost(c.config) == c.cost


@pytest.mark.parametrize("name", ["rexnet", "mobilenetv2", "piecewise"])
def test_every_draw_on_multiples_of_8_decodes_into_the_macs_window(name):
    # one width step moved early blocks from 16 to 24 channels, over the 3% window, for about
    # a fifth of these draws; the fill pass raises late widths one multiple at a time instead
    space, budget = load_space(name), Budget(400_000_000, channel_multiple=8)
    rng = random.Random(7)
    for _ in range(40):
        c = space.decode(space.suggest(RandomTrial(rng)), budget)
        widths = c.config.out_channels
        assert budget.lower <= c.cost.macs <= budget.macs and count_cost(c.config) == c.cost
        assert all(w % 8 == 0 for w in [*widths, c.config.penultimate_channels])
        assert widths == sorted(widths)


def test_channel_multiple_in_the_space_file():
    text = TINY_SPACE.replace("  stem: 8\n", "  stem: 8\n  channel_multiple: 4\n")
    space = parse_space(text, "tiny4.yaml")
    for c in space.sample(Budget(5_000_000, resolution=RES), 5, seed=0):
        assert all(w % 4 == 0 for w in c.config.out_channels)


@pytest.mark.parametrize(("text", "ms"), [("12ms", 12.0), ("0.012s", 12.0), ("12", 12.0), ("500us", 0.5)])
def test_latency_budget_strings(text, ms):
    assert parse_latency_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["12qs", "ms", "-3ms", "0", "twelve"])
def test_bad_latency_budget_strings(text):
    with pytest.raises(BudgetError, match="--latency-budget"):
        parse_latency_budget(text)


def test_cli_preview_refuses_a_tiny_budget_with_exit_2(table, space, tmp_path, capsys):
    table_path, space_path = tmp_path / "t.json", tmp_path / "tiny.yaml"
    table.save(table_path)
    space_path.write_text(TINY_SPACE)
    argv = [
        "latency-table",
        "preview",
        str(space_path),
        "--latency-table",
        str(table_path),
        "--resolution",
        "32",
    ]
    assert main([*argv, "--latency-budget", "0.00001ms"]) == 2
    assert "smallest reachable latency" in capsys.readouterr().err
    assert main([*argv, "--latency-budget", "12qs"]) == 2
    assert "--latency-budget must be a duration" in capsys.readouterr().err
    assert main([*argv[:3], "--latency-budget", "5ms"]) == 2
    assert "--latency-table" in capsys.readouterr().err
    budget = table.predict(_shapes(space, 1)[1]) * 1.5
    flags = ["--latency-budget", f"{budget}ms", "--channel-multiple", "8", "--json", "--sample", "2"]
    assert main([*argv, *flags]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(line["latency_ms"] <= budget for line in lines)
    assert all(w % 8 == 0 for line in lines for w in ReXNetConfig.from_dict(line["config"]).out_channels)


def test_environment_mismatch_lists_fields():
    a = Environment("cpu", "X", "torch", "2.0", 2)
    b = Environment("cpu", "X", "torch", "2.0", 1)
    assert a.mismatches(b) == ["threads"]
    assert a.describe() == "cpu (X) with torch 2.0, 2 threads, batch 1"


def test_calibration_networks_are_decoded_candidates_of_every_space():
    from rexsearch.cost import count_cost

    nets = calibration_networks(18, resolution=112)
    assert nets == calibration_networks(18, resolution=112)  # deterministic
    assert len(nets) == 18 and len({n.to_json() for n in nets}) == 18
    macs = [count_cost(n, resolution=112).macs for n in nets]
    # the 224 range scaled by the area, each within the decoder's 3% window below its budget
    assert min(macs) >= 0.97 * 25e6 and max(macs) <= 300e6
    assert len({len(n.blocks) for n in nets}) >= 3  # drawn from the spaces in turn: several depths


def test_measurement_keeps_the_allocator_steady(space, monkeypatch):
    import platform

    import rexsearch.allocator as lat

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        measure_latency(_shapes(space, 1)[0], RES, threads=1, warmup=1, repeats=1)
        assert lat.ALLOCATOR_STEADY and steady_allocator()
    monkeypatch.setattr(lat, "ALLOCATOR_STEADY", False)
    monkeypatch.setattr(lat.platform, "system", lambda: "Darwin")
    assert steady_allocator() is False  # elsewhere a no-op


def test_drift_check_times_the_calibration_networks_again(table, tmp_path, monkeypatch, capsys):
    import rexsearch.latency.build as latency_build

    rows = table.correction.calibration
    assert all(ReXNetConfig.from_dict(r["config"]).to_dict() == r["config"] for r in rows)
    drift = check_drift(table, networks=2)
    assert len(drift.networks) == 2 and {r["name"] for r in drift.networks} <= {r["name"] for r in rows}
    assert drift.ratio > 0 and all(r["now_ms"] > 0 for r in drift.networks)

    # a machine 10% slower than at the build: every network's fastest run 1.1x its build time
    then = {r["name"]: r["measured_ms"] for r in rows}
    real = latency_build.measure_latency

    def slower(config, *args, **kwargs):
        lat = real(config, *args, **kwargs)
        name = config.name or config.short_hash()
        return dataclasses.replace(lat, min_ms=1.1 * then[name])

    monkeypatch.setattr(latency_build, "measure_latency", slower)
    drift = check_drift(table)
    assert drift.ratio == pytest.approx(1.1)
    assert drift.describe().startswith("this machine runs 10% slower than when the table was built")
    path = tmp_path / "table.json"
    table.save(path)
    assert main(["latency-table", "check", str(path), "--networks", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ratio"] == pytest.approx(1.1) and len(out["networks"]) == 3
    assert main(["latency-table", "check", str(path), "--quiet"]) == 0
    assert "10% slower than when the table was built" in capsys.readouterr().out


def test_drift_check_refuses_a_table_without_calibration_configs(table, tmp_path, capsys):
    path = tmp_path / "old.json"
    table.save(path)
    data = json.loads(path.read_text())
    for row in data["correction"]["calibration"]:
        del row["config"]
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="rebuild it"):
        check_drift(load_table(path))
    assert main(["latency-table", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not record their configs" in err


def test_grid_on_a_channel_multiple_covers_the_range_with_aligned_points():
    plain = channel_grid(27, 1280, 6)
    for multiple in (8, 16):
        grid = channel_grid(27, 1280, 6, multiple)
        assert all(c % multiple == 0 for c in grid) and list(grid) == sorted(set(grid))
        assert grid[0] <= plain[0] and grid[-1] >= plain[-1]
        assert len(grid) >= 5
    assert channel_grid(3, 5, 6, 8) == (8, 16)  # two points at least
    assert channel_grid(27, 1280, 6, 1) == plain


def test_table_built_on_a_channel_multiple_serves_only_searches_on_it(space, tmp_path, capsys):
    shapes = [
        space.build(v, w, channel_multiple=8)
        for v, w in zip(
            [space.suggest(RandomTrial(random.Random(s))) for s in range(3)], (0.5, 1.0, 2.0), strict=True
        )
    ]
    table = _tiny_table(shapes, points=3, activations=("silu", "relu6", "relu"), channel_multiple=8)
    assert table.channel_multiple == 8
    for (op, key), family in table.families.items():
        for axis in family.axes:
            assert axis == (3,) or all(c % 8 == 0 for c in axis), (op, key, axis)
    path = tmp_path / "t8.json"
    table.save(path)
    again = load_table(path)
    assert again == table and again.channel_multiple == 8
    table.check_channel_multiple(8)
    table.check_channel_multiple(16)  # multiples of 16 are on the grid of 8
    for other in (None, 1, 4, 12):
        with pytest.raises(UserError, match="built for widths on multiples of 8"):
            table.check_channel_multiple(other)
    # a table without a multiple serves any search
    dataclasses.replace(table, channel_multiple=None).check_channel_multiple(4)

    space_path = tmp_path / "tiny.yaml"
    space_path.write_text(TINY_SPACE)
    budget = table.predict(shapes[1]) * 1.5
    argv = ["space", str(space_path), "--latency-table", str(path), "--latency-budget", f"{budget}ms"]
    argv += ["--resolution", "32", "--sample", "2", "--json"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --channel-multiple 8" in err
    assert main([*argv, "--channel-multiple", "8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(row["latency_ms"] <= budget for row in rows)

    assert main(["latency-table", "show", str(path)]) == 0
    assert "multiples of 8" in capsys.readouterr().out
    data = json.loads(path.read_text())
    data["channel_multiple"] = "8"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="damaged latency table"):
        load_table(path)


def _coarse_decodes(table, space, multiple: int) -> tuple[list[tuple[Budget, Candidate]], list[str]]:
    reference = table.predict(_shapes(space, 1)[1])
    decoded, failures = [], []
    for budget_ms in (reference * f for f in (1.3, 1.7, 2.2, 2.9)):
        budget = Budget(latency_ms=budget_ms, latency_table=table, resolution=RES, channel_multiple=multiple)
        for seed in range(3):
            values = space.suggest(RandomTrial(random.Random(seed)))
            try:
                decoded.append((budget, space.decode(values, budget)))
            except UserError as exc:
                failures.append(str(exc))
    return decoded, failures


def test_fill_pass_brings_coarse_rounding_into_the_latency_window(table, space, monkeypatch):
    import rexsearch.space.solve as solve

    # widths on multiples of 64 step the tiny space's prediction far more than the 3% window
    monkeypatch.setattr(solve, "FILL_SWEEPS", 0)
    before, unfilled = _coarse_decodes(table, space, 64)
    coarse = [m for m in unfilled if m.endswith("rounding steps are too coarse")]
    assert coarse
    monkeypatch.undo()
    decoded, failures = _coarse_decodes(table, space, 64)
    # only the budgets under even the narrowest network stay refused
    assert all(m.startswith("even the narrowest network") for m in failures)
    assert len(decoded) == len(before) + len(coarse)
    for budget, cand in decoded:
        widths = [b.out_channels for b in cand.config.blocks] + [cand.config.penultimate_channels]
        assert all(w % 64 == 0 for w in widths) and widths[:-1] == sorted(widths[:-1])
        assert 0.97 * budget.latency_ms <= cand.latency_ms <= budget.latency_ms
        assert cand.latency_ms == pytest.approx(table.predict(cand.config, RES))
        # the pass counts MACs only for the network it returns: its cost is that network's
        assert cand.cost == count_cost(cand.config, RES)


class _WidthTable:
    """A stand-in latency table whose "configs" are widths: it predicts ``ms(width)``."""

    blocked_alignment = None

    def __init__(self, ms):
        self.ms = ms

    def predict(self, width, resolution=None):
        return self.ms(width)


def _search(ms, limit, iterations=12):
    """The latency width search on ``ms``: the widths it tried, the kept width, its bracket."""
    import rexsearch.space.solve as solve

    budget = Budget(latency_ms=limit, latency_table=_WidthTable(ms), resolution=RES)
    tried = []

    def cost_at(w):
        tried.append(w)
        return w, None

    lo, hi = solve.WIDTH_RANGE
    (kept, _), a, b = solve.interpolation_search(cost_at, budget, (lo, None), (hi, None), lo, hi, iterations)
    return tried, kept, a, b


@pytest.mark.parametrize("limit", [0.5, 3.0, 40.0, 900.0])
def test_width_search_interpolates_to_a_smooth_latency_in_fewer_steps_than_bisection(limit):
    import rexsearch.space.solve as solve

    def ms(w):  # a fixed cost plus a power of the width, as a network's latency grows
        return 0.2 + 3.0 * w**1.7

    tried, kept, a, b = _search(ms, limit)
    # within 0.2% under the limit (or resolved to bisection's bracket) with fewer evaluations
    # than bisection's 12; every width kept was checked within the budget
    assert ms(kept) <= limit
    assert ms(kept) >= (1 - solve.CLOSE_ENOUGH) * limit or b - a <= math.log(800) / 2**12
    assert len(tried) <= 8, tried
    assert kept in tried


@pytest.mark.parametrize("seed", range(4))
def test_width_search_on_a_jumpy_latency_keeps_only_checked_widths_within_bisections_steps(seed):
    rng = random.Random(seed)
    jumps = {round(rng.uniform(0.1, 8.0), 3): rng.uniform(-0.2, 0.2) for _ in range(40)}

    def ms(w):  # rising in steps (rounded channels), some of them down (blocked kernels)
        w = math.floor(w * 8) / 8
        return (1.0 + 2.0 * w**1.5) * (1.0 + sum(d for x, d in jumps.items() if x <= w) / 10)

    # a limit inside a step at width 2: no width comes within 0.2% of it, so the search
    # narrows its bracket onto the step as bisection would
    limit = (ms(1.99) + ms(2.0)) / 2
    assert ms(1.99) < 0.99 * limit < limit < ms(2.0)
    tried, kept, a, b = _search(ms, limit)
    assert ms(kept) <= limit and math.exp(a) == pytest.approx(kept)
    assert ms(math.exp(b)) > limit
    assert b - a <= math.log(800) / 2**12 * (1 + 1e-9)
    assert len(tried) <= 13  # the ITP bound: bisection's 12 steps and one
    assert all(ms(w) > limit for w in tried if w > kept)  # it keeps the widest fitting width tried


def test_width_search_on_a_flat_staircase_ends_within_bisections_steps():
    def ms(w):  # flat steps: interpolation has no slope inside a step
        return float(math.floor(w * 4) + 1)

    # a limit between two steps: no width comes within 0.2% of it, so the bracket narrows
    tried, kept, a, b = _search(ms, 4.5)
    assert ms(kept) <= 4.5 and len(tried) <= 13
    assert kept < 1.0 <= math.exp(b) * (1 + 1e-9)  # the step at 1.0 is bracketed
    assert b - a <= math.log(800) / 2**12 * (1 + 1e-9)


def test_width_search_without_a_bracket_returns_the_narrowest():
    import rexsearch.space.solve as solve

    budget = Budget(latency_ms=1.0, latency_table=_WidthTable(lambda w: w), resolution=RES)
    tried = []
    kept, a, b = solve.interpolation_search(
        lambda w: tried.append(w) or (w, None), budget, (2.0, None), (2.0, None), 2.0, 2.0, 12
    )
    assert kept == (2.0, None) and a == b == math.log(2.0) and not tried


class _BlockedStandIn:
    """Predicts a block four times faster when its input channels are on a multiple of 4 (as
    ONNX Runtime runs blocked kernels), without telling the solver about it."""

    blocked_alignment = None  # the solver is not told

    def predict(self, config, resolution=None):
        ms, hw = 0.0, RES
        for b in config.blocks:
            hw //= b.stride
            work = (b.in_channels + b.out_channels) * b.dw_channels * hw * hw * 1e-6
            ms += work * (0.25 if b.in_channels % 4 == 0 else 1.0)
        return ms + config.penultimate_channels * 1e-3


class _BlockedTable(_BlockedStandIn):
    """The same predictions, with the table's ``blocked_alignment`` that the fill pass reads."""

    blocked_alignment = 4


def _decode_all(space, table, multiple=None):
    """Decodes 40 draws of ``space`` under five latency budgets: (limit, candidate) pairs and
    the number refused."""
    decoded, refused = [], 0
    for limit in (0.5, 1.0, 2.0, 4.0, 8.0):
        budget = Budget(latency_ms=limit, latency_table=table, resolution=RES, channel_multiple=multiple)
        for seed in range(40):
            try:
                decoded.append((limit, space.decode(space.suggest(RandomTrial(random.Random(seed))), budget)))
            except UserError:
                refused += 1
    return decoded, refused


def test_fill_pass_raises_widths_onto_a_tables_blocked_alignment(space, monkeypatch):
    import rexsearch.space.solve as solve

    sweeps = []  # (aligned raise first, window met) of every run of the sweeps
    fill = solve.raise_widths

    def recorded(*args, **kwargs):
        out = fill(*args, **kwargs)
        sweeps.append((kwargs["aligned_first"], out[2]))
        return out

    monkeypatch.setattr(solve, "raise_widths", recorded)
    plain, plain_refused = _decode_all(space, _BlockedStandIn())
    plain_sweeps = list(sweeps)
    assert all(not first for first, _ in plain_sweeps)  # no alignment known: one run, one raise
    sweeps.clear()
    aligned, aligned_refused = _decode_all(space, _BlockedTable())
    # one channel more can cost more than the budget leaves where a few more, onto the
    # alignment, cost less: knowing the alignment, the pass brings more draws into the window
    assert plain_refused > 0 and aligned_refused < plain_refused
    # the first run already tries the aligned raise where one channel does not fit ...
    first_met = sum(met for first, met in sweeps if not first)
    assert first_met > sum(met for _, met in plain_sweeps)
    # ... and reruns with it first only where it missed the window; the rerun brings some in
    for (first, met), (again, _) in itertools.pairwise(sweeps):
        if again:
            assert not first and not met
    rescued = sum(first and met for first, met in sweeps)
    assert rescued > 0
    for limit, cand in plain + aligned:
        assert 0.97 * limit <= cand.latency_ms <= limit
        assert cand.cost == count_cost(cand.config, RES)
        widths = cand.config.out_channels
        assert widths == sorted(widths)

    # the rerun's network is the one returned: without it, exactly the rescued draws are refused
    def no_rerun(*args, **kwargs):
        out = fill(*args, **kwargs)
        return (out[0], out[1], False) if kwargs["aligned_first"] else out

    monkeypatch.setattr(solve, "raise_widths", no_rerun)
    assert _decode_all(space, _BlockedTable())[1] == aligned_refused + rescued


@pytest.mark.parametrize("multiple", [2, 3, 8])
def test_aligned_raise_keeps_widths_on_the_channel_multiple(space, multiple):
    # a table built without a multiple serves any search: the raise onto the alignment (4)
    # goes to a common multiple of both, never off the search's multiple
    decoded, _ = _decode_all(space, _BlockedTable(), multiple)
    assert decoded
    for limit, cand in decoded:
        widths = [cand.config.stem_channels, *cand.config.out_channels, cand.config.penultimate_channels]
        assert all(w % multiple == 0 for w in widths), widths
        assert cand.latency_ms <= limit


def test_decode_under_a_latency_budget_interpolates():
    class Smooth:  # a latency that grows smoothly with every width of a full-size network
        predictions = 0

        def predict(self, config, resolution=None):
            self.predictions += 1
            work = sum((b.in_channels + b.out_channels) * b.dw_channels for b in config.blocks)
            return 0.1 + work * 1e-5

    space, table = load_space("rexnet"), Smooth()
    reference = table.predict(get_preset("rexnet-1.0"))
    table.predictions, draws = 0, 0
    for factor in (0.5, 1.0, 2.0):
        budget = Budget(latency_ms=reference * factor, latency_table=table)
        for seed in range(20):
            cand = space.decode(space.suggest(RandomTrial(random.Random(seed))), budget)
            assert 0.97 * budget.latency_ms <= cand.latency_ms <= budget.latency_ms
            draws += 1
    # bisection costs at least 16 predictions a draw (12 steps, both ends, the width found
    # and the candidate's; 18.2 measured here); the interpolation search needs fewer
    assert table.predictions / draws < 16


def test_coarse_rounding_under_a_latency_budget_alone_names_only_the_latency_window(
    table, space, monkeypatch
):
    import rexsearch.space.solve as solve

    # without the fill pass, multiples of 64 leave draws under the window: the message
    monkeypatch.setattr(solve, "FILL_SWEEPS", 0)
    reference = table.predict(_shapes(space, 1)[1])
    failures = []
    for budget_ms in (reference * f for f in (1.3, 1.7, 2.2, 2.9)):
        budget = Budget(latency_ms=budget_ms, latency_table=table, resolution=RES, channel_multiple=64)
        for seed in range(3):
            values = space.suggest(RandomTrial(random.Random(seed)))
            try:
                space.decode(values, budget)
            except UserError as exc:
                failures.append(str(exc))
    assert failures
    for message in failures:
        assert "MACs or" not in message and "(0 MACs" not in message
    steps = [m for m in failures if "under 97% of the latency budget (" in m]
    assert steps and all(m.endswith("rounding steps are too coarse") for m in steps)


def test_table_on_a_multiple_fits_its_correction_on_networks_on_it(space, monkeypatch):
    import rexsearch.latency.build as latency_build

    monkeypatch.setattr(latency_build, "CALIBRATION_NETWORKS", 2)
    shapes = [space.build(space.suggest(RandomTrial(random.Random(s))), 1.3) for s in (0, 1)]
    assert any(w % 8 for c in shapes for w in c.out_channels)  # the given shapes are not aligned
    table = build_table(
        threads=1, resolution=RES, shapes=shapes, points=2, warmup=1, repeats=1, channel_multiple=8
    )
    rows = table.correction.calibration
    assert len(rows) == 2
    for row in rows:
        config = ReXNetConfig.from_dict(row["config"])
        widths = [config.stem_channels, config.penultimate_channels, *config.out_channels]
        assert all(w % 8 == 0 for w in widths), widths
    for (op, _), family in table.families.items():
        if op == "se":
            assert all(c % 8 == 0 for c in family.axes[0])


def test_activation_after_the_se_gate_is_its_own_context(space):
    config = next(c for c in _shapes(space, 2, seed=4) if any(b.se for b in c.blocks))
    ops = config_ops(config, RES)
    acts = [op for op in ops if op[0] == "act"]
    assert {op[1][2] for op in acts} == set(ACT_CONTEXTS)
    for i, op in enumerate(ops):  # "se" exactly where the activation follows the SE block
        if op[0] == "act":
            assert (op[1][2] == "se") == (ops[i - 1][0] == "se")


def test_torch_table_times_an_activation_once_for_both_contexts(table):
    acts = {key: f.ms for (op, key), f in table.families.items() if op == "act"}
    assert acts
    for (name, hw, _), ms in acts.items():
        assert acts[(name, hw, "conv")] == acts[(name, hw, "se")] == ms


def test_format_1_table_loads_with_one_activation_time_for_both_contexts(table, space, tmp_path):
    data = table.to_dict()
    data["format"] = "rexsearch.latency-table/1"
    data["families"] = [
        {**f, "key": f["key"][:2]} if f["op"] == "act" else f
        for f in data["families"]
        if not (f["op"] == "act" and f["key"][2] == "se")
    ]
    path = tmp_path / "format1.json"
    path.write_text(json.dumps(data))
    old = load_table(path)
    assert old.families == table.families
    for config in _shapes(space, 2, seed=6):
        assert old.predict(config) == pytest.approx(table.predict(config), rel=1e-12)
    data["format"] = "rexsearch.latency-table/9"
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="is not a latency table"):
        load_table(path)


def test_onnxruntime_fuses_what_the_table_times_in_context():
    """The facts the ONNX Runtime table relies on: the profiler reports every node; a ReLU
    after a convolution is fused into it (no node of its own), an ELU is not."""
    pytest.importorskip("onnxruntime")
    import torch
    from torch import nn

    env = environment("cpu", "onnxruntime", 1)
    x = (torch.randn(1, 16, 8, 8),)
    kinds = {
        name: [k for k, _ in node_times(InContext(16, act), x, env, 1, 2)]
        for name, act in (("alone", None), ("relu", nn.ReLU()), ("elu", nn.ELU()))
    }
    assert sorted(kinds["relu"]) == sorted(kinds["alone"])
    assert "Elu" in kinds["elu"] and "Elu" not in kinds["alone"]
    assert all(ms >= 0 for _, ms in node_times(InContext(16, None), x, env, 1, 2))


def test_onnxruntime_table_round_trips_and_predicts(space, tmp_path):
    pytest.importorskip("onnxruntime")
    values = [space.suggest(RandomTrial(random.Random(s))) for s in range(2)]
    shapes = [space.build(v, w, channel_multiple=8) for v in values for w in (0.5, 1.5)]
    # on a channel multiple: the operators are timed in context
    table = _tiny_table(
        shapes, runtime="onnxruntime", channel_multiple=8, points=2, activations=("silu", "relu6")
    )
    assert table.environment.runtime == "onnxruntime"
    for (op, _), family in table.families.items():
        assert min(family.ms) >= 0
        if op != "conv" or family.axes[0] != (3,):
            assert all(c % 8 == 0 for axis in family.axes for c in axis)
    path = tmp_path / "ort.json"
    table.save(path)
    again = load_table(path, expect=table.environment)
    for config in shapes:
        assert again.predict(config) == pytest.approx(table.predict(config), rel=1e-12)
        assert again.predict(config) > 0


def test_operator_in_context_is_read_off_one_profile():
    conversions = [("ReorderInput", 0.3), ("Conv", 2.0), ("ReorderOutput", 0.2), ("Elu", 0.5)]
    nodes = [*conversions, ("ReorderInput", 0.25), ("Conv", 1.9), ("ReorderOutput", 0.3)]
    # between the convolutions: the ELU and the conversions it needs; plus first less last
    assert in_context_ms(nodes) == pytest.approx(0.2 + 0.5 + 0.25 + 0.1)
    assert in_context_ms([("FusedConv", 2.1), ("Conv", 2.0)]) == pytest.approx(0.1)  # fused
    assert in_context_ms([("Conv", 1.9), ("Conv", 2.0)]) == 0.0  # never negative
    se = [("Conv", 1.0), ("GlobalAveragePool", 0.1), ("FusedConv", 0.05), ("Conv", 0.04), ("Mul", 0.2)]
    assert in_context_ms([*se, ("Conv", 1.0)]) == pytest.approx(0.39)  # the SE's own convs count
    with pytest.raises(LatencyTableError, match="1 convolution nodes"):
        in_context_ms([("ReorderInput", 0.1), ("Conv", 1.0), ("Relu", 0.1)])


def test_operator_weights_are_the_folded_networks_parameters(space):
    from rexsearch.model import build_model

    for config in _shapes(space, 2, seed=8):
        folded = fold_batchnorm(build_model(config))
        assert sum(op_weights(op) for op in config_ops(config, RES)) == sum(
            p.numel() for p in folded.parameters()
        )


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


def _block_key(cin, cout, expansion, hw=8, se=None, exp_act="silu", dw_act="relu6", shortcut=False):
    return ("block", cin, cout, expansion, 3, 1, se, hw, exp_act, dw_act, shortcut)


def test_segment_conversions_follow_onnx_runtimes_layout_rules():
    hw2 = 8 * 8
    # the stem reads the plain image and writes blocked; an ELU needs the plain layout back
    assert segment_conversions(("stem", 32, 2, 16, "relu"), False, 4) == (0.0, True)
    assert segment_conversions(("stem", 32, 2, 16, "elu"), False, 4) == pytest.approx((16 * 256 / 1e6, False))
    # every width on the alignment, no SE, no partial shortcut: nothing converted
    assert segment_conversions(_block_key(16, 16, 6), True, 4) == (0.0, True)
    # widths off it run plain throughout: nothing converted either
    assert segment_conversions(_block_key(18, 22, 3), False, 4) == (0.0, False)
    # fewer than PLAIN_INPUT_BELOW inputs: the expand conv reads plain and writes blocked, so
    # the unaligned depthwise conv (13 x 6 = 78 channels) converts its input back
    assert segment_conversions(_block_key(13, 20, 6), False, 4) == pytest.approx((78 * hw2 / 1e6, False))
    # SE needs the plain layout, the projection after it the blocked one again
    moved, blocked = segment_conversions(_block_key(16, 16, 6, se=4), True, 4)
    assert (moved, blocked) == pytest.approx((2 * 96 * hw2 / 1e6, True))
    # a partial shortcut (input narrower than output) adds in the plain layout: the projection's
    # output and the block's input (blocked here) are both converted
    assert segment_conversions(_block_key(16, 24, 6, shortcut=True), True, 4) == pytest.approx(
        ((24 + 16) * hw2 / 1e6, False)
    )
    # a blocked input into a dense convolution that runs plain is converted back
    assert segment_conversions(_block_key(18, 22, 3), True, 4) == pytest.approx((18 * hw2 / 1e6, False))
    # an identity add of a plain input and a blocked projection converts one side: plain after
    assert segment_conversions(_block_key(16, 16, 6, shortcut=True), False, 4) == pytest.approx(
        (2 * 16 * hw2 / 1e6, False)
    )
    # an identity shortcut keeps the blocked layout; so does an activation other than ELU,
    # softplus or mish
    assert segment_conversions(_block_key(16, 16, 6, shortcut=True, dw_act="hardswish"), True, 4) == (
        0.0,
        True,
    )
    assert segment_conversions(_block_key(16, 16, 6, dw_act="softplus"), True, 4)[0] > 0
    # the layout a segment leaves is what the next one starts from
    assert segment_conversions(_block_key(16, 16, 6), False, 4) == pytest.approx((16 * hw2 / 1e6, True))


def test_only_a_table_with_a_blocked_alignment_counts_conversions(table, space):
    config = _shapes(space, 1)[1]
    assert table.blocked_alignment is None and table.components(config)[-1] == 0.0
    blocked = dataclasses.replace(table, blocked_alignment=4)
    moved = blocked.components(config)[-1]
    steps, layout = [], False  # the input image is plain
    for key, _ in config_segments(config, table.resolution):
        step, layout = segment_conversions(key, layout, 4)
        steps.append(step)
    assert moved == pytest.approx(sum(steps)) and moved > 0
    # a correction without the term (any older table's) predicts as before; with it, the
    # conversions add their time
    assert blocked.predict(config) == pytest.approx(table.predict(config), rel=1e-12)
    weighted = dataclasses.replace(
        blocked, correction=dataclasses.replace(blocked.correction, per_mconversion_ms=0.5)
    )
    assert weighted.predict(config) == pytest.approx(blocked.predict(config) + 0.5 * moved)


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
    budget = noisy.predict(_shapes(space, 1)[1]) * 1.5
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
        latency_ms=table.predict(_shapes(space, 1)[1]) * 1.5,
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
    budget = table.predict(_shapes(space, 1)[1]) * 1.5
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


def test_table_build_refuses_an_unwritable_out_before_measuring(tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("measured before checking --out")

    monkeypatch.setattr("rexsearch.cli.latency.build_table", never)
    a_file = tmp_path / "a-file"
    a_file.write_text("kept\n")
    for out, why in [
        (tmp_path / "missing" / "t.json", "does not exist"),
        (tmp_path, "is a directory"),
        (a_file / "t.json", "is a file"),
    ]:
        assert main(["latency-table", "build", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1 and "Traceback" not in err
    assert a_file.read_text() == "kept\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_quick_table_build_has_too_few_calibration_networks_for_an_auto_margin(
    table, tmp_path, monkeypatch, capsys
):
    seen = {}

    def fake_build(*args, **kwargs):
        seen.update(kwargs)
        return table

    monkeypatch.setattr("rexsearch.cli.latency.build_table", fake_build)
    out = tmp_path / "quick.json"
    assert main(["latency-table", "build", "--quick", "--channel-multiple", "8", "--out", str(out)]) == 0
    calibration = seen["calibration"]
    assert MIN_WEIGHTS_CALIBRATION <= len(calibration) < MIN_AUTO_MARGIN_CALIBRATION
    assert all(w % 8 == 0 for c in calibration for w in c.out_channels)  # decoded on the multiple
    assert seen["points"] <= 4 and load_table(out) == table
    seen.clear()
    assert main(["latency-table", "build", "--out", str(tmp_path / "full.json")]) == 0
    assert seen["calibration"] is None  # the default: CALIBRATION_NETWORKS of them


def test_grid_off_a_multiple_covers_the_range_with_no_point_on_it():
    plain = channel_grid(27, 1280, 6)
    for avoid in (4, 8):
        grid = channel_grid(27, 1280, 6, avoid=avoid)
        assert all(c % avoid for c in grid) and list(grid) == sorted(set(grid))
        assert grid[0] <= plain[0] and grid[-1] >= plain[-1] and len(grid) == len(plain)
    assert channel_grid(4, 5, 6, avoid=4)[0] == 3  # the low end moves down, so the range stays covered


def test_families_on_the_blocked_alignment_are_measured_apart(space):
    shapes = _shapes(space, 2)
    plain = {(op, key): axes for op, key, axes in table_families(shapes, RES, 4, ("silu",), (4,), (3,))}
    split = {
        (op, key): axes for op, key, axes in table_families(shapes, RES, 4, ("silu",), (4,), (3,), None, 4)
    }
    assert not any(key[-1] == BLOCKED for _, key in plain)
    for (op, key), axes in plain.items():
        if op not in ("conv", "dw") or axes[0] == (3,):  # the stem's 3 input channels: one family
            assert split[(op, key)] == axes and (op, (*key, BLOCKED)) not in split
            continue
        off, on = split[(op, key)], split[(op, (*key, BLOCKED))]
        assert all(c % 4 for c in off[0]) and all(c % 4 == 0 for c in on[0])
        assert off[1:] == on[1:] == axes[1:]  # only the input channels are split
        assert min(on[0]) <= max(min(axes[0]), 4) and max(on[0]) >= max(axes[0])


def test_channels_on_the_blocked_alignment_are_predicted_by_their_own_family(tmp_path):
    env = Environment("cpu", "AMD EPYC", "onnxruntime", "1.32.0", 1, 1)
    key = (3, 1, 8)
    families = {
        ("dw", key): Family("dw", key, ((5, 9, 13),), (1.0, 2.0, 3.0)),
        ("dw", (*key, BLOCKED)): Family("dw", (*key, BLOCKED), ((4, 8, 12),), (0.1, 0.2, 0.3)),
    }
    table = LatencyTable(env, 8, families, Correction(0.0, 1.0), blocked_alignment=4)
    assert table.op_ms(("dw", key, (8,))) == pytest.approx(0.2)  # blocked: several times faster
    assert table.op_ms(("dw", key, (9,))) == pytest.approx(2.0)
    assert table.op_ms(("dw", key, (11,))) == pytest.approx(2.5)
    unsplit = LatencyTable(env, 8, families, Correction(0.0, 1.0))
    assert unsplit.op_ms(("dw", key, (8,))) == pytest.approx(1.75)  # a table without the split
    # a copy without the split predicts as one; it does not read the original's cached times
    copy = dataclasses.replace(table, blocked_alignment=None)
    assert copy.op_ms(("dw", key, (8,))) == pytest.approx(1.75)
    assert table.op_ms(("dw", key, (8,))) == pytest.approx(0.2)
    path = tmp_path / "t.json"
    table.save(path)
    again = load_table(path)
    assert again.blocked_alignment == 4 and again.op_ms(("dw", key, (8,))) == pytest.approx(0.2)
    data = json.loads(path.read_text())
    data["blocked_alignment"] = "four"
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match=r"damaged latency table.*blocked_alignment"):
        load_table(path)


def test_onnxruntime_blocked_alignment_is_read_off_the_profile():
    """The fact the split relies on: a depthwise convolution over channels on the alignment runs
    blocked (layout conversions around it), one off it does not."""
    pytest.importorskip("onnxruntime")
    import torch
    from torch import nn

    env = environment("cpu", "onnxruntime", 1)
    align = probe_blocked_alignment(env)
    if align is None:
        pytest.skip("this CPU has no blocked kernels in ONNX Runtime")

    def kinds(c):
        conv = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        return {k for k, _ in node_times(conv, (torch.zeros(1, c, 8, 8),), env, 1, 1)}

    assert "ReorderInput" in kinds(3 * align) and "ReorderInput" not in kinds(3 * align + 1)
    assert probe_blocked_alignment(environment("cpu", "torch", 1)) is None


def test_a_table_counts_conversions_with_its_own_plain_input_threshold(table, space):
    configs = _shapes(space, 4)
    counts = {
        below: [
            dataclasses.replace(table, blocked_alignment=4, plain_input_below=below).components(c)[-1]
            for c in configs
        ]
        for below in (8, 16)
    }
    assert counts[8] != counts[16]
    default = dataclasses.replace(table, blocked_alignment=4)  # a table that predates the probe
    assert [default.components(c)[-1] for c in configs] == counts[PLAIN_INPUT_BELOW]


def test_onnxruntime_dense_convolutions_below_the_block_run_blocked():
    """The fact the conversion count relies on: a dense convolution over fewer input channels
    than the runtime's block runs blocked from the plain layout (its output converted back),
    one over more, off the alignment, runs plain."""
    pytest.importorskip("onnxruntime")
    import torch
    from torch import nn

    env = environment("cpu", "onnxruntime", 1)
    align = probe_blocked_alignment(env)
    if align is None:
        pytest.skip("this CPU has no blocked kernels in ONNX Runtime")
    below = probe_plain_input_below(env)
    assert below % 2 == 0 and 4 <= below <= 64

    def converts(c):
        nodes = node_times(nn.Conv2d(c, 16, 1), (torch.zeros(1, c, 8, 8),), env, 1, 1)
        return any(k in ("ReorderInput", "ReorderOutput") for k, _ in nodes)

    assert converts(below - 1) and not converts(below + 1)


def test_a_tables_plain_input_threshold_round_trips_and_sets_the_count(tmp_path):
    env = Environment("cpu", "AMD EPYC", "onnxruntime", "1.32.0", 1, 1)
    table = LatencyTable(env, 8, {}, Correction(0.0, 1.0), blocked_alignment=4, plain_input_below=8)
    path = tmp_path / "t.json"
    table.save(path)
    assert load_table(path).plain_input_below == 8
    # 13 inputs: under a block of 16 the expand conv runs blocked and the unaligned depthwise
    # conv converts its input back; under a block of 8 both run plain
    key = ("block", 13, 20, 6, 3, 1, None, 8, "silu", "relu6", False)
    assert segment_conversions(key, False, 4, 16)[0] > 0
    assert segment_conversions(key, False, 4, 8) == (0.0, False)

    data = json.loads(path.read_text())
    data["plain_input_below"] = "sixteen"
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match=r"damaged latency table.*plain_input_below"):
        load_table(path)


def test_onnxruntime_table_without_a_multiple_measures_blocked_families(space, tmp_path):
    pytest.importorskip("onnxruntime")
    align = probe_blocked_alignment(environment("cpu", "onnxruntime", 1))
    if align is None:
        pytest.skip("this CPU has no blocked kernels in ONNX Runtime")
    table = _tiny_table(_shapes(space, 1), runtime="onnxruntime", points=2, activations=("silu", "relu6"))
    assert table.blocked_alignment == align
    blocked = [f for (op, key), f in table.families.items() if key[-1] == BLOCKED]
    assert blocked and {f.op for f in blocked} == {"conv", "dw"}
    assert all(c % align == 0 for f in blocked for c in f.axes[0]) and all(min(f.ms) >= 0 for f in blocked)
    path = tmp_path / "ort.json"
    table.save(path)
    again = load_table(path, expect=table.environment)
    assert again.blocked_alignment == align
    below = probe_plain_input_below(environment("cpu", "onnxruntime", 1))
    assert table.plain_input_below == again.plain_input_below == below
    # every calibration row records its conversions: the correction can weigh them
    assert all(len(r["components"]) == len(KINDS) + 3 for r in table.correction.calibration)
    for config in _shapes(space, 1):
        assert again.predict(config) == pytest.approx(table.predict(config), rel=1e-12)
        assert again.predict(config) > 0


def _damaged(data: dict, how: str) -> dict:
    data = json.loads(json.dumps(data))
    if how == "negative-time":
        data["families"][0]["ms"][0] = -1.0
    elif how == "nan-time":
        data["families"][0]["ms"][0] = float("nan")
    elif how == "negative-intercept":
        data["correction"]["intercept_ms"] = -1e6
    elif how == "huge-batch":
        data["environment"]["batch"] = 10**9
    elif how == "huge-resolution":
        data["resolution"] = 10**7
    elif how == "calibration-rows":
        data["correction"]["calibration"] = [{}] * 20_000
    return data


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("negative-time", "negative or non-finite time"),
        ("nan-time", "negative or non-finite time"),
        ("negative-intercept", "would predict negative times"),
        ("huge-batch", "batch 1000000000 is outside"),
        ("huge-resolution", "resolution 10000000 is outside"),
        ("calibration-rows", "20,000 calibration rows"),
    ],
)
def test_damaged_tables_are_refused_in_one_line(table, tmp_path, capsys, how, problem):
    path = tmp_path / "table.json"
    table.save(path)
    path.write_text(json.dumps(_damaged(json.loads(path.read_text()), how)))
    with pytest.raises(LatencyTableError, match=problem):
        load_table(path)
    assert main(["latency-table", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert problem.split()[0] in err and err.count("\n") == 1, err


def test_unreadable_table_files_exit_2(tmp_path, capsys):
    for name, content in (
        ("utf8.json", b'{"format": "\xff"}'),
        ("deep.json", b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        ("digits.json", b'{"format": ' + b"9" * 5000 + b"}"),
    ):
        (tmp_path / name).write_bytes(content)
        assert main(["latency-table", "show", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert "internal error" not in err and err.count("\n") == 1, err
