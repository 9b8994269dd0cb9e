"""Where and how a latency is measured: the measurement, its environment, the runtimes' facts
(ONNX Runtime's fused and blocked kernels) the table relies on.

Everything runs on tiny networks at 32x32 with coarse tables; no assertion is about time.
"""

from __future__ import annotations

import json

import pytest
from support.latency import RES, draw_shapes

from rexsearch.allocator import steady_allocator
from rexsearch.cli import main
from rexsearch.latency import (
    Environment,
    InContext,
    environment,
    measure_latency,
    node_times,
    probe_blocked_alignment,
    probe_plain_input_below,
)

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


def test_measurement_is_positive_in_a_stable_format(space):
    config = draw_shapes(space, 1)[1]
    result = measure_latency(config, RES, threads=1, warmup=1, repeats=3)
    out = result.to_dict()
    assert set(out) == LATENCY_KEYS and set(out["settings"]) == SETTINGS_KEYS
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms and result.spread_ms >= 0
    assert out["settings"]["runtime"] == "torch" and out["settings"]["threads"] == 1
    assert out["resolution"] == RES and out["bn_folded"] is True


def test_onnxruntime_measurement(space):
    pytest.importorskip("onnxruntime")
    result = measure_latency(
        draw_shapes(space, 1)[0], RES, runtime="onnxruntime", threads=1, warmup=1, repeats=3
    )
    assert result.median_ms > 0 and result.environment.runtime == "onnxruntime"


def test_cli_latency_json(tmp_path, space, capsys):
    path = tmp_path / "tiny.json"
    draw_shapes(space, 1)[0].save(path)
    argv = ["latency", "--config", str(path), "--resolution", "32", "--threads", "1", "--warmup", "1"]
    assert main([*argv, "--repeats", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["median_ms"] > 0 and set(out) == LATENCY_KEYS | {"config"}


def test_environment_mismatch_lists_fields():
    a = Environment("cpu", "X", "torch", "2.0", 2)
    b = Environment("cpu", "X", "torch", "2.0", 1)
    assert a.mismatches(b) == ["threads"]
    assert a.describe() == "cpu (X) with torch 2.0, 2 threads, batch 1"


def test_measurement_keeps_the_allocator_steady(space, monkeypatch):
    import platform

    import rexsearch.allocator as lat

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        measure_latency(draw_shapes(space, 1)[0], RES, threads=1, warmup=1, repeats=1)
        assert lat.ALLOCATOR_STEADY and steady_allocator()
    monkeypatch.setattr(lat, "ALLOCATOR_STEADY", False)
    monkeypatch.setattr(lat.platform, "system", lambda: "Darwin")
    assert steady_allocator() is False  # elsewhere a no-op


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
