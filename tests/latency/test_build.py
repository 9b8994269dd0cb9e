"""Building a latency table on this machine (families, operators timed in context, the
calibration networks) and its drift since.

Everything runs on tiny networks at 32x32 with coarse tables; no assertion is about time.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from support.latency import RES, draw_shapes, tiny_table

from rexsearch.cli import main
from rexsearch.config import ReXNetConfig
from rexsearch.latency import (
    BLOCKED,
    KINDS,
    MIN_AUTO_MARGIN_CALIBRATION,
    MIN_WEIGHTS_CALIBRATION,
    LatencyTableError,
    build_table,
    check_drift,
    environment,
    in_context_ms,
    load_table,
    probe_blocked_alignment,
    probe_plain_input_below,
    table_families,
)
from rexsearch.space import RandomTrial


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


def test_torch_table_times_an_activation_once_for_both_contexts(table):
    acts = {key: f.ms for (op, key), f in table.families.items() if op == "act"}
    assert acts
    for (name, hw, _), ms in acts.items():
        assert acts[(name, hw, "conv")] == acts[(name, hw, "se")] == ms


def test_onnxruntime_table_round_trips_and_predicts(space, tmp_path):
    pytest.importorskip("onnxruntime")
    values = [space.suggest(RandomTrial(random.Random(s))) for s in range(2)]
    shapes = [space.build(v, w, channel_multiple=8) for v in values for w in (0.5, 1.5)]
    # on a channel multiple: the operators are timed in context
    table = tiny_table(
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


def test_families_on_the_blocked_alignment_are_measured_apart(space):
    shapes = draw_shapes(space, 2)
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


def test_onnxruntime_table_without_a_multiple_measures_blocked_families(space, tmp_path):
    pytest.importorskip("onnxruntime")
    align = probe_blocked_alignment(environment("cpu", "onnxruntime", 1))
    if align is None:
        pytest.skip("this CPU has no blocked kernels in ONNX Runtime")
    table = tiny_table(draw_shapes(space, 1), runtime="onnxruntime", points=2, activations=("silu", "relu6"))
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
    for config in draw_shapes(space, 1):
        assert again.predict(config) == pytest.approx(table.predict(config), rel=1e-12)
        assert again.predict(config) > 0
