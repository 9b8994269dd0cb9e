"""Exporting winners and presets, and load_model on every file kind it accepts."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from support import runfixture

import rexsearch
from rexsearch.checkpoints import load_model
from rexsearch.cli import main
from rexsearch.config import ReXNetConfig
from rexsearch.errors import LayoutError, UserError
from rexsearch.export import export_preset, export_trial
from rexsearch.layouts import expected_shapes, to_layout
from rexsearch.model import build_model
from rexsearch.principles import get_preset
from rexsearch.results import RunResults, pareto_mask

KEPT = 3  # the trial whose proxy weights the fixture keeps


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runfixture.make_run(tmp_path_factory.mktemp("run"), keep_weights=[KEPT])


@pytest.fixture(scope="module")
def rexnet(tmp_path_factory):
    """rexnet-1.0 exported once per layout."""
    root = tmp_path_factory.mktemp("presets")
    return {
        layout: export_preset("rexnet-1.0", root / layout, layout)
        for layout in ("official", "timm", "rexsearch")
    }


def _seeded(config: ReXNetConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config).eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int = 64, batch: int = 2) -> bool:
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def _front(run):
    frame = RunResults.load(run).table
    done = frame[(frame["state"] == "COMPLETE") & frame["feasible"].fillna(False).astype(bool)]
    return done[pareto_mask(done[["accuracy", "rank"]].to_numpy(float), [True, True])]


def test_best_is_the_most_accurate_feasible_front_point(run):
    front = _front(run)
    trial, why = RunResults.load(run).best()
    assert trial.number == int(front.sort_values("accuracy").iloc[-1]["number"])
    assert trial.number != 18  # the infeasible trial is more accurate but over the budget
    assert "highest accuracy within the budget" in why
    ranked, _ = RunResults.load(run).best("rank")
    assert ranked.number == int(front.sort_values("rank").iloc[-1]["number"])
    balanced, _ = RunResults.load(run).best("balanced")
    assert balanced.number in set(front["number"])


def test_export_best_round_trip(run, tmp_path):
    out = tmp_path / "best"
    result = export_trial(run.path, out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    trial = run.open_study().trials[result.trial]
    config = ReXNetConfig.load(out / "config.json")
    assert config == ReXNetConfig.from_dict(trial.user_attrs["config"])
    assert config.num_classes == 1000
    loaded = load_model(out)
    assert _same_outputs(loaded, _seeded(config, run.seed))
    with torch.no_grad():
        assert loaded(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    card = (out / "README.md").read_text()
    assert f"rexsearch train --config {out / 'config.json'}" in card
    assert "multiply-accumulates of conv and linear layers" in card
    assert f"{trial.user_attrs['params']:,}" in card
    assert "highest proxy accuracy within the budget, always on the feasible Pareto front" in card
    assert f"{100 * trial.values[0]:.2f}%" in card


def test_export_proxy_weights(run, tmp_path):
    out = tmp_path / "proxy"
    export_trial(run.path, out, trial=KEPT, weights="proxy")
    kept = load_file(str(run.weights_path(KEPT)))
    loaded = load_model(out)
    assert loaded.config.num_classes == 100
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, kept[key]), key
    target = ReXNetConfig.load(out / "target-config.json")
    assert target == ReXNetConfig.from_dict(run.open_study().trials[KEPT].user_attrs["config"])
    assert f"rexsearch train --config {out / 'target-config.json'}" in (out / "README.md").read_text()


def test_proxy_weights_missing_suggests_keep_weights(run, tmp_path):
    with pytest.raises(UserError, match="--keep-weights"):
        export_trial(run.path, tmp_path / "x", trial=4, weights="proxy")
    assert not (tmp_path / "x").exists()


def test_refuses_non_empty_out_unless_forced(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_trial(run.path, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_trial(run.path, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary siblings left


def test_failed_export_leaves_nothing(run, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("rexsearch.export.export_torchscript", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_trial(run.path, tmp_path / "out", formats=["safetensors", "torchscript"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_export(run, tmp_path):
    out = tmp_path / "ts"
    export_trial(run.path, out, trial=KEPT, weights="proxy", formats=["safetensors", "torchscript"])
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    assert _same_outputs(scripted, load_model(out), size=32)


def test_onnx_export_dynamic_batch(run, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    result = export_trial(run.path, out, trial=KEPT, weights="proxy", formats=["safetensors", "onnx"])
    assert result.onnx_max_diff is not None and result.onnx_max_diff < 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_model(out)
    for batch in (1, 8):
        x = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == (batch, 100)
        assert np.allclose(got, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("layout", ["official", "timm", "rexsearch"])
def test_preset_layouts_reload_identically(rexnet, layout):
    result = rexnet[layout]
    path = result.out / "model.safetensors"
    state = load_file(str(path))
    expected = expected_shapes(result.config, layout)
    assert {k: tuple(v.shape) for k, v in state.items()} == dict(expected)
    reference = _seeded(get_preset("rexnet-1.0"), 0)
    assert _same_outputs(load_model(result.out), reference)
    assert _same_outputs(load_model(path, preset="rexnet-1.0"), reference)


def test_layout_detected_from_keys_without_metadata(rexnet, tmp_path):
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(rexnet["timm"].out / "model.safetensors")), str(bare))
    with pytest.raises(UserError, match="preset"):
        load_model(bare)
    reference = _seeded(get_preset("rexnet-1.0"), 0)
    assert _same_outputs(load_model(bare, preset="rexnet-1.0"), reference)


def test_official_pt_checkpoint_with_another_head(tmp_path):
    config = get_preset("rexnet-0.9", num_classes=10)
    model = _seeded(config, 1)
    state = to_layout(model.state_dict(), config, "official")
    path = tmp_path / "rexnetv1_0.9.pth"
    torch.save({"state_dict": OrderedDict(state)}, path)
    loaded = load_model(path, preset="rexnet-0.9")
    assert loaded.config.num_classes == 10
    assert _same_outputs(loaded, model)


def test_mismatched_architecture_is_a_layout_error(rexnet):
    path = rexnet["official"].out / "model.safetensors"
    with pytest.raises(LayoutError, match=str(path)):
        load_model(path, preset="rexnet-1.3")


def test_corrupt_and_truncated_safetensors_are_rejected(rexnet, tmp_path):
    data = (rexnet["rexsearch"].out / "model.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file" * 10)
    flipped = tmp_path / "flipped.safetensors"
    raw = bytearray(data)
    raw[-5] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    for path, why in (
        (truncated, "truncated or corrupt"),
        (garbage, "truncated or corrupt"),
        (flipped, "checksum"),
    ):
        with pytest.raises(UserError, match=why) as info:
            load_model(path, preset="rexnet-1.0")
        assert str(path) in str(info.value)
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "config.json").write_text(get_preset("rexnet-1.0").to_json())
    (export_dir / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(UserError, match=r"model\.safetensors"):
        load_model(export_dir)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_pt_files_never_unpickle_objects(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"stem.conv.weight": _Payload()}, protocol=2))
    with pytest.raises(UserError, match=r"evil\.pt"):
        load_model(evil, preset="rexnet-1.0")
    assert "unpickled" not in capsys.readouterr().out
    truncated = tmp_path / "truncated.pt"
    torch.save(build_model(get_preset("rexnet-0.9")).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"truncated\.pt"):
        load_model(truncated, preset="rexnet-0.9")
    not_a_state = tmp_path / "numbers.pt"
    torch.save({"epoch": 3}, not_a_state)
    with pytest.raises(UserError, match="does not hold a state_dict"):
        load_model(not_a_state, preset="rexnet-0.9")


def test_load_model_is_public():
    assert rexsearch.load_model is load_model


def test_cli_export_and_errors(run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(run.path), "--trial", "best", "--out", str(out), "--pick", "rank"]) == 0
    assert "highest rank" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["format"] == "rexsearch.config/1"
    cases = [
        (["export", str(run.path), "--trial", "99", "--out", str(tmp_path / "a")], "no trial 99"),
        (["export", str(run.path), "--trial", "13", "--out", str(tmp_path / "a")], "failed"),
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "a")], "no run directory"),
        (["export", str(run.path), "--out", str(out)], "not empty"),
        (["export", str(run.path), "--preset", "rexnet-1.0", "--out", str(tmp_path / "a")], "not both"),
        (["export", "--out", str(tmp_path / "a")], "RUN_DIR"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "a").exists()


def test_cli_export_preset(tmp_path, capsys):
    out = tmp_path / "timm"
    assert main(["export", "--preset", "rexnet-1.0", "--layout", "timm", "--out", str(out)]) == 0
    assert "head.fc.weight" in load_file(str(out / "model.safetensors"))
    assert ReXNetConfig.load(out / "config.json") == get_preset("rexnet-1.0")
