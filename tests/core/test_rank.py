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


def test_paper_protocol_eval_mode_uniform_inputs_strict_rank(small_config):
    torch.manual_seed(0)
    model = build_model(small_config).eval()
    paper = measure_rank(model, samples=16, seed=2, protocol="paper")
    assert (paper.protocol, paper.rtol) == ("paper", 0.0)
    assert paper.to_dict()["protocol"] == "paper"
    assert measure_rank(model, samples=16, seed=2, protocol="paper", rtol=0.03).rtol == 0.03
    assert not model.training  # the forward runs in eval mode and leaves the model as it was
    # eval mode: the running statistics shape the features (batch statistics would ignore them)
    bn = model.blocks[1].conv_exp.bn
    before = measure_rank(model, samples=16, seed=2, protocol="batchnorm")
    with torch.no_grad():
        bn.running_mean.fill_(50.0)  # every expanded channel is pushed far below zero: ReLU6 kills it
    exp = {layer.name: layer for layer in measure_rank(model, samples=16, seed=2, protocol="paper").per_layer}
    assert (
        exp["blocks.1.conv_exp"].rank
        < {layer.name: layer for layer in paper.per_layer}["blocks.1.conv_exp"].rank
    )
    assert measure_rank(model, samples=16, seed=2, protocol="batchnorm") == before
    with pytest.raises(UserError, match="unknown rank protocol"):
        measure_rank(model, samples=16, protocol="nope")


def test_cli_rank_protocol(capsys):
    args = ["rank", "--preset", "rexnet-1.0", "--samples", "16"]
    assert main([*args, "--protocol", "paper", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["protocol"], out["rtol"]) == ("paper", 0.0)
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"] == "batchnorm"
    assert main([*args, "--protocol", "paper"]) == 0
    assert "U[0, 1) images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([*args, "--protocol", "bogus"])
    assert exc.value.code == 2 and "--protocol" in capsys.readouterr().err


def test_trial_measures_rank_with_the_runs_protocol(monkeypatch):
    import ray
    from ray import tune

    from rexsearch.search import TrialJob, trial_function
    from rexsearch.space import Budget, baseline_candidate

    reports = []
    monkeypatch.setattr(tune, "report", reports.append)
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: type("C", (), {"get_node_id": lambda self: "n"})()
    )
    cand = baseline_candidate("rexnet-linear", Budget(100_000_000)).to_dict()
    for protocol in ("paper", "batchnorm"):
        job = TrialJob(objectives=("rank",), rank_samples=8, rank_protocol=protocol)
        trial_function({"candidate": cand}, None, job)
    paper, batchnorm = reports
    assert "error" not in paper and "error" not in batchnorm
    proxy = proxy_config(ReXNetConfig.from_dict(cand["config"]))
    assert paper["rank"] == measure_rank(proxy, samples=8, seed=0, protocol="paper").rank
    assert batchnorm["rank"] == measure_rank(proxy, samples=8, seed=0).rank
    assert paper["rank"] != batchnorm["rank"]
