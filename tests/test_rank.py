import json
import re
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rexsearch.cli import main
from rexsearch.config import BlockConfig, ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.model import build_model
from rexsearch.principles import get_preset
from rexsearch.proxy import proxy_config
from rexsearch.rank import (
    CSV_COLUMNS,
    DIM_RATIOS,
    STUDY_BLOCKS,
    STUDY_NONLINEARITIES,
    measure_rank,
    numerical_rank,
    run_rank_study,
    write_rank_study,
)


@pytest.fixture(scope="module")
def small_config():
    """A 4-block network, fast to measure."""
    return ReXNetConfig(
        blocks=(
            BlockConfig(16, 16, expansion=1),
            BlockConfig(16, 24, stride=2),
            BlockConfig(24, 24, se=True),
            BlockConfig(24, 32, stride=2, se=True),
        ),
        stem_channels=16,
        stem_stride=1,
        se_ratio=4,
        penultimate_channels=64,
        num_classes=10,
    )


@pytest.fixture(scope="module")
def quick_study():
    return run_rank_study(quick=True, networks=3, seed=0)


def test_full_rank_matrix_gives_full_rank():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 100, generator=g)
    assert int(numerical_rank(x)) == 100
    assert int(numerical_rank(x, rtol=0.0)) == 100
    assert int(numerical_rank(x.T)) == 100
    assert int(numerical_rank(torch.zeros(10, 5))) == 0


def test_strict_tolerance_matches_torch_matrix_rank():
    g = torch.Generator().manual_seed(1)
    for d_in in (3, 17, 40):
        x = torch.randn(120, d_in, generator=g) @ torch.randn(d_in, 60, generator=g)
        assert int(numerical_rank(x, rtol=0.0)) == int(torch.linalg.matrix_rank(x)) == min(d_in, 60)


def test_linear_layers_rank_equals_dimension_ratio(quick_study):
    linear = quick_study[(quick_study["block"] == "conv1x1") & (quick_study["nonlinearity"] == "linear")]
    for ratio, rank_ratio in zip(linear["dim_ratio"], linear["rank_ratio"], strict=True):
        if ratio <= 0.8:  # near 1 a square Gaussian W has singular values below the 3% tolerance
            assert rank_ratio == pytest.approx(ratio, abs=0.03)
    assert linear["rank_ratio"].iloc[-1] > 0.85


def test_silu_beats_relu_at_small_ratios_single_1x1_conv():
    df = run_rank_study(networks=2, seed=0, d_out=(192, 256), blocks=["conv1x1"])
    small = df[df["dim_ratio"] <= 0.3].pivot(index="dim_ratio", columns="nonlinearity", values="rank_ratio")
    assert (small["silu"] > small["relu"]).all()
    assert (small["relu"] > small["linear"]).all()


def test_quick_study_shape(quick_study):
    assert tuple(quick_study.columns) == CSV_COLUMNS
    assert len(quick_study) == len(STUDY_BLOCKS) * len(STUDY_NONLINEARITIES) * len(DIM_RATIOS)
    assert quick_study["rank_ratio"].between(0, 1).all()
    assert (quick_study["networks"] == 3).all()


def test_study_is_deterministic_and_reports_progress():
    calls = []
    a = run_rank_study(
        networks=2, seed=5, d_out=(8, 12), blocks=["conv3x3"], progress=lambda *c: calls.append(c)
    )
    b = run_rank_study(networks=2, seed=5, d_out=(8, 12), blocks=["conv3x3"])
    pd.testing.assert_frame_equal(a, b)
    assert calls[-1] == (10, 10) and len(calls) == 10


def test_measure_rank_deterministic_and_objective(small_config):
    a = measure_rank(small_config, samples=16, seed=3)
    b = measure_rank(small_config, samples=16, seed=3)
    assert a == b and a.to_dict() == b.to_dict()
    names = [layer.name for layer in a.per_layer]
    assert names == [
        "blocks.0",
        "blocks.1.conv_exp",
        "blocks.1",
        "blocks.2.conv_exp",
        "blocks.2",
        "blocks.3.conv_exp",
        "blocks.3",
        "head",
    ]
    objective = [layer for layer in a.per_layer if layer.out_channels > layer.in_channels]
    assert a.objective_layers == tuple(objective)
    assert a.rank == pytest.approx(sum(layer.normalized for layer in objective) / len(objective))
    assert all(0 < layer.normalized <= 1 for layer in a.per_layer)
    assert 0 < a.nuclear_norm <= 1
    json.dumps(a.to_dict())


def test_measure_rank_leaves_model_unchanged(small_config):
    torch.manual_seed(0)
    model = build_model(small_config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from_model = measure_rank(model, samples=8, seed=1)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert from_model == measure_rank(model, samples=8, seed=1)


def test_measure_rank_real_inputs_and_bad_input(small_config):
    images = torch.rand(6, 3, 20, 20)
    result = measure_rank(small_config, inputs=images)
    assert (result.samples, result.resolution) == (6, 20)
    with pytest.raises(UserError, match="shape"):
        measure_rank(small_config, inputs=torch.rand(6, 1, 20, 20))
    with pytest.raises(UserError, match="samples"):
        measure_rank(small_config, samples=1)


def test_linear_expand_conv_loses_rank(small_config):
    linear = measure_rank(replace(small_config, activation="identity"), samples=16)
    exp = {layer.name: layer for layer in linear.per_layer}["blocks.1.conv_exp"]
    assert exp.rank == exp.in_channels  # a linear 1x1 expansion keeps the input's rank


def test_cli_rank_json_one_value_per_expand_layer(capsys):
    assert main(["rank", "--preset", "rexnet-1.0", "--json", "--samples", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"rank", "nuclear_norm", "samples", "resolution", "per_layer"}
    cfg = proxy_config(get_preset("rexnet-1.0"))
    expand = [b for b in cfg.blocks if b.expansion != 1] + [
        b for b in cfg.blocks if b.out_channels > b.in_channels
    ]
    objective = [layer for layer in out["per_layer"] if layer["in_objective"]]
    assert len(objective) == len(expand) + 1  # + the head
    assert out["rank"] == pytest.approx(sum(layer["normalized"] for layer in objective) / len(objective))
    assert (out["samples"], out["resolution"]) == (32, 32)


def test_cli_rank_table_says_proxy(capsys):
    assert main(["rank", "--preset", "rexnet-1.0", "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "CIFAR proxy" in out and "rank objective" in out and "blocks.15.conv_exp" in out


def test_cli_rank_study_quick_writes_csv_and_offline_html(tmp_path, capsys):
    assert main(["rank-study", "--quick", "--networks", "2", "--out", str(tmp_path / "study")]) == 0
    captured = capsys.readouterr()
    assert "rank-study: 40/40 points" in captured.err
    df = pd.read_csv(tmp_path / "study" / "rank_study.csv")
    assert tuple(df.columns) == ("block", "nonlinearity", "dim_ratio", "rank_ratio", "std", "networks")
    html = (tmp_path / "study" / "rank_study.html").read_text()
    assert not re.search(r"<script[^>]*src=[\"']?https?:", html)
    assert "plotly" in html.lower() and len(html) > 1_000_000  # plotly.js embedded


def test_write_rank_study_into_a_file_is_a_user_error(tmp_path, quick_study):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        write_rank_study(quick_study, blocker)


def test_cli_bad_input_exit_2(capsys, tmp_path):
    assert main(["rank", "--preset", "rexnet-7"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["rank", "--preset", "rexnet-1.0", "--samples", "1"]) == 2
    assert "samples" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["rank-study", "--quick", "--networks", "1", "--out", str(tmp_path / "f")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_study_nonlinearities_are_not_in_place():
    z = torch.randn(5, 4)
    for name, f in STUDY_NONLINEARITIES.items():
        before = z.clone()
        f(z)
        assert torch.equal(z, before), name
    assert torch.equal(STUDY_NONLINEARITIES["leaky_relu"](z), F.leaky_relu(z, 0.01))
