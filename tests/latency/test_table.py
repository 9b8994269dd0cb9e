"""The per-operator latency table: its prediction, interpolation and grids, its file and the
tables it refuses.

Everything runs on tiny networks at 32x32 with coarse tables; no assertion is about time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random

import pytest
from support.latency import RES, TINY_SPACE, draw_shapes, tiny_table

from rexsearch.cli import main
from rexsearch.config import ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.latency import (
    BLOCKED,
    KINDS,
    PLAIN_INPUT_BELOW,
    Correction,
    Environment,
    Family,
    LatencyTable,
    LatencyTableError,
    channel_grid,
    config_ops,
    config_segments,
    environment,
    load_table,
    monotone_envelope,
    op_weights,
    segment_conversions,
)
from rexsearch.space import RandomTrial


def test_table_round_trips_through_its_file(table, space, tmp_path):
    path = tmp_path / "table.json"
    table.save(path)
    again = load_table(path, expect=table.environment)
    assert again == table
    for config in draw_shapes(space, 3, seed=5):
        assert again.predict(config) == pytest.approx(table.predict(config), rel=1e-12)
        assert table.predict(config) > 0


def test_a_copy_of_a_table_predicts_from_its_own_times(table, space):
    """``dataclasses.replace`` (as ``bench_latency_ab.py score --unblocked`` makes a copy) must
    not hand the copy the original's cached operator and block times, nor take the copy's."""
    configs = draw_shapes(space, 2, seed=7)
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


def test_components_are_the_operator_sum_by_kind(table, space):
    for config in draw_shapes(space, 2, seed=9):
        ops = config_ops(config, RES)
        parts = table.components(config)
        assert parts[len(KINDS)] == len(ops)
        assert parts[len(KINDS) + 1] == pytest.approx(sum(op_weights(op) for op in ops) / 1e6)
        for i, kind in enumerate(KINDS):
            assert parts[i] == pytest.approx(sum(table.op_ms(op) for op in ops if op[0] == kind), rel=1e-12)
        assert table.components(config) == parts  # from the segment cache
        assert table.summed_ms(config) == pytest.approx(sum(parts[: len(KINDS)]), rel=1e-12)


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
    table = tiny_table(shapes, points=3, activations=("silu", "relu6", "relu"), channel_multiple=8)
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
    for config in draw_shapes(space, 2, seed=6):
        assert old.predict(config) == pytest.approx(table.predict(config), rel=1e-12)
    data["format"] = "rexsearch.latency-table/9"
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="is not a latency table"):
        load_table(path)


def test_only_a_table_with_a_blocked_alignment_counts_conversions(table, space):
    config = draw_shapes(space, 1)[1]
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


def test_grid_off_a_multiple_covers_the_range_with_no_point_on_it():
    plain = channel_grid(27, 1280, 6)
    for avoid in (4, 8):
        grid = channel_grid(27, 1280, 6, avoid=avoid)
        assert all(c % avoid for c in grid) and list(grid) == sorted(set(grid))
        assert grid[0] <= plain[0] and grid[-1] >= plain[-1] and len(grid) == len(plain)
    assert channel_grid(4, 5, 6, avoid=4)[0] == 3  # the low end moves down, so the range stays covered


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


def test_a_table_counts_conversions_with_its_own_plain_input_threshold(table, space):
    configs = draw_shapes(space, 4)
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
