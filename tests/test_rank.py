import json
from dataclasses import replace

import pytest
import torch

from rexsearch.cli import main
from rexsearch.config import BlockConfig, ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.model import build_model
from rexsearch.principles import get_preset
from rexsearch.proxy import proxy_config
from rexsearch.rank import measure_rank, numerical_rank


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


def test_cli_bad_input_exit_2(capsys):
    assert main(["rank", "--preset", "rexnet-7"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["rank", "--preset", "rexnet-1.0", "--samples", "1"]) == 2
    assert "samples" in capsys.readouterr().err
