import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rexsearch.cli import main
from rexsearch.cost import count_cost
from rexsearch.errors import UserError
from rexsearch.principles import get_preset
from rexsearch.space import (
    Budget,
    InfeasibleError,
    SpaceError,
    baseline_configs,
    check_feasible,
    load_space,
    parse_space,
    shipped_space_names,
)

SHIPPED = shipped_space_names()


def test_shipped_spaces_present():
    paper = [f"paper-{n}ib{k}" for n in (13, 5, 9) for k in ("", "-stagewise")]
    assert ["mobilenetv2", *paper, "piecewise", "rexnet"] == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("budget", [400_000_000, 150_000_000])
def test_every_candidate_inside_budget(name, budget):
    b = Budget(budget)
    candidates = load_space(name).sample(b, 40, seed=1)
    assert len(candidates) == 40
    for c in candidates:
        assert 0.97 * budget <= c.cost.macs <= budget
        assert count_cost(c.config, 224) == c.cost


@settings(max_examples=15, deadline=None)
@given(budget=st.integers(120_000_000, 2_000_000_000), params=st.none() | st.integers(3_000_000, 40_000_000))
def test_budget_decoding_property(budget, params):
    b = Budget(budget, params)
    for c in load_space("rexnet").sample(b, 3, seed=budget % 97, max_tries=200):
        assert b.lower <= c.cost.macs <= b.macs
        assert params is None or c.cost.params <= params


def test_seed_reproduces_samples():
    b = Budget(300_000_000)
    first = [c.config for c in load_space("rexnet").sample(b, 5, seed=7)]
    again = [c.config for c in load_space("rexnet").sample(b, 5, seed=7)]
    other = [c.config for c in load_space("rexnet").sample(b, 5, seed=8)]
    assert first == again and first != other


def test_linear_baseline_at_400m_is_rexnet_1_0():
    base = baseline_configs(Budget(400_000_000))
    assert base["rexnet-linear"].config.out_channels == get_preset("rexnet-1.0").out_channels
    assert base["rexnet-linear"].cost.macs == 398_370_392
    mb = base["mobilenetv2-stagewise"]
    assert 388_000_000 <= mb.cost.macs <= 400_000_000
    assert mb.config.activation == "relu6" and mb.config.shortcut == "identity"


def test_impossible_budget_names_smallest_cost():
    with pytest.raises(UserError, match=r"smallest reachable cost is [\d,]+ MACs"):
        check_feasible(load_space("rexnet"), Budget(100_000))


def test_params_budget_that_binds_is_infeasible_not_silent():
    space = load_space("rexnet")
    with pytest.raises(InfeasibleError, match="params budget binds first"):
        space.decode({"penultimate": 1600}, Budget(400_000_000, params=1_000_000))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "generator: linear\nvariables:\n  start: {low: 8, high: 32}\n  slpoe: {low: 1, high: 2}\n",
            "line 4: unknown variable 'slpoe' for generator linear; allowed: activation",
        ),
        (
            "generator: linear\nvariables:\n  activation: {choices: [silu, swish]}\n",
            "line 3: variables.activation choice 'swish' is not allowed; allowed values: identity, relu",
        ),
        (
            "generator: spiral\nvariables: {}\n",
            "line 1: generator must be one of linear, stagewise, piecewise",
        ),
        (
            "generator: linear\nfixed:\n  stem: -3\nvariables:\n  start: {low: 8, high: 32}\n",
            "line 3: fixed stem = -3 is not allowed; allowed values: integers in [4, 128]",
        ),
        ("generator: linear\nvariables:\n  start: {low: 40, high: 32}\n", "low (40) must be below high (32)"),
        ("generator: linear\nvariabels:\n  start: {low: 8, high: 32}\n", "line 2: unknown key 'variabels'"),
        ("generator: linear\nvariables:\n  start: [8, 32\n", "not valid YAML"),
        (
            "generator: linear\nvariables:\n  expansion: {low: 1, high: 9}\n",
            "bound 9 is not allowed; allowed values: integers in [1, 6]",
        ),
    ],
)
def test_malformed_space_named(text, message):
    with pytest.raises(SpaceError) as err:
        parse_space(text, "my.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.yaml")


def test_space_cli_json_lines(capsys):
    assert main(["space", "rexnet", "--flops-budget", "400M", "--sample", "3", "--seed", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert set(line) == {"config", "macs", "params", "sampled"}
        assert 388_000_000 <= line["macs"] <= 400_000_000
        assert "expand_fraction" in line["sampled"]


def test_space_cli_errors(capsys, tmp_path):
    assert main(["space", "rexnet", "--flops-budget", "400Q", "--sample", "1"]) == 2
    assert "--flops-budget" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("generator: linear\nvariables:\n  nope: {low: 1, high: 2}\n")
    assert main(["space", str(bad), "--flops-budget", "400M"]) == 2
    assert "line 3: unknown variable 'nope'" in capsys.readouterr().err
    assert main(["space", "nonexistent-space", "--flops-budget", "400M"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in SHIPPED)


def _laughs(levels: int = 9) -> str:
    """A "billion laughs" document: 9 ** levels strings from a few hundred characters."""
    anchors = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return (
        f"generator: linear\nvariables:\n  kernel: {{choices: [3, 5]}}\ndescription: [{', '.join(anchors)}]\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "generator: linear\nfixed:\n  activation: !!python/object/apply:os.system [echo pwned]\n"
            "variables:\n  kernel: {choices: [3, 5]}\n",
            "line 3: the tag !!python/object/apply:os.system is not allowed",
        ),
        ("generator: !custom linear\nvariables: {}\n", "line 1: the tag !custom is not allowed"),
        (
            "generator: linear\nvariables:\n  depth_mult: " + "[" * 5000 + "]" * 5000 + "\n",
            "line 3: values are nested deeper than 32 levels",
        ),
        (_laughs(), "line 4: the file expands to more than 10,000 values (counting what aliases repeat)"),
        (
            "generator: linear\nvariables: &v {kernel: *v}\n",
            "the alias *v refers to a value that contains it",
        ),
        (
            "generator: linear\nvariables:\n  expansion: {low: 2, high: 6, step: 0.5}\n",
            "line 3: variables.expansion.step must be a positive integer (the variable is an int), got 0.5",
        ),
        (
            "generator: linear\nvariables:\n  start: {low: 8, high: 32, step: .nan}\n",
            "variables.start.step must be a positive number of at most high - low, got nan",
        ),
        (
            "generator: linear\nvariables:\n  start: {low: 8, high: 32, step: 1.0e+400}\n",
            "variables.start.step must be a positive number of at most high - low, got inf",
        ),
        (
            "generator: linear\nfixed:\n  stem: !!int abc\nvariables:\n  kernel: {choices: [3]}\n",
            "line 3: the value cannot be read",
        ),
    ],
    ids=[
        "python-tag",
        "custom-tag",
        "deep",
        "billion-laughs",
        "self-alias",
        "int-step",
        "nan-step",
        "inf-step",
        "bad-int",
    ],
)
def test_hostile_space_files_are_one_sentence(text, message):
    with pytest.raises(SpaceError) as err:
        parse_space(text, "my.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.yaml")


def test_hostile_space_file_exits_2_before_anything_runs(capsys, tmp_path):
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(_laughs())
    assert main(["space", str(laughs), "--flops-budget", "400M", "--sample", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rexsearch: error: ") and "expands to more than" in err and len(err) < 400
