import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rexsearch import count_cost, get_preset, measure_cost
from rexsearch.config import ACTIVATIONS, SHORTCUTS, BlockConfig, ReXNetConfig
from rexsearch.errors import BudgetError
from rexsearch.principles import PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_analytic_equals_fvcore(name):
    cfg = get_preset(name)
    a, m = count_cost(cfg), measure_cost(cfg)
    assert (a.params, a.macs, a.fvcore_total) == (m.params, m.macs, m.total)


@st.composite
def configs(draw):
    stem = draw(st.integers(1, 24))
    n = draw(st.integers(1, 5))
    blocks, prev = [], stem
    for _ in range(n):
        out = draw(st.integers(1, 40))
        blocks.append(
            BlockConfig(
                in_channels=prev,
                out_channels=out,
                expansion=draw(st.integers(1, 6)),
                kernel=draw(st.sampled_from([1, 3, 5, 7])),
                stride=draw(st.sampled_from([1, 2])),
                se=draw(st.booleans()),
                activation=draw(st.none() | st.sampled_from(ACTIVATIONS)),
            )
        )
        prev = out
    min_dw = min((b.dw_channels for b in blocks if b.se), default=64)
    return ReXNetConfig(
        blocks=tuple(blocks),
        stem_channels=stem,
        stem_stride=draw(st.sampled_from([1, 2])),
        se_ratio=draw(st.integers(1, max(1, min(16, min_dw)))),
        penultimate_channels=draw(st.integers(1, 96)),
        num_classes=draw(st.integers(1, 120)),
        activation=draw(st.sampled_from(ACTIVATIONS)),
        dw_activation=draw(st.sampled_from(ACTIVATIONS)),
        shortcut=draw(st.sampled_from(SHORTCUTS)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), resolution=st.integers(1, 97))
def test_analytic_equals_fvcore_on_random_configs(cfg, resolution):
    a, m = count_cost(cfg, resolution), measure_cost(cfg, resolution)
    assert (a.params, a.macs, a.fvcore_total) == (m.params, m.macs, m.total)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("400M", 400_000_000),
        ("0.4G", 400_000_000),
        ("1.5B", 1_500_000_000),
        ("400e6", 400_000_000),
        ("400000000", 400_000_000),
        ("400m", 400_000_000),
        ("250k", 250_000),
        (" 2g ", 2_000_000_000),
    ],
)
def test_budget_strings(text, value):
    from rexsearch.cost import parse_budget

    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["400Q", "", "M", "-5M", "0", "1e400", "nan", "400 MB", "4,000"])
def test_bad_budget_names_flag(text):
    from rexsearch.cost import parse_budget

    with pytest.raises(BudgetError, match="--params-budget"):
        parse_budget(text, flag="--params-budget")


@pytest.mark.parametrize("text", ["1e400", "1e19", "9" * 500, "1e300G"])
def test_overflowing_budget_says_so(text):
    from rexsearch.cost import parse_budget

    with pytest.raises(BudgetError, match=r"--flops-budget '.*' is too large: it overflows"):
        parse_budget(text)


def _huge() -> ReXNetConfig:
    """A network with 10^12 parameters (a million-way classifier on a million channels)."""
    return ReXNetConfig(
        blocks=(BlockConfig(32, 16, expansion=1),), penultimate_channels=10**6, num_classes=10**6
    )


def test_memory_estimate_grows_with_the_network_and_the_batch():
    from rexsearch.cost import memory_estimate

    small = memory_estimate(get_preset("rexnet-1.0"), 224)
    assert 4 * 2 * 4_796_873 < small < 200e6
    assert memory_estimate(get_preset("rexnet-1.0"), 224, batch=8) > small
    assert memory_estimate(_huge(), 224) > 8e12


def test_check_memory_refuses_before_anything_is_built(monkeypatch):
    from rexsearch import model
    from rexsearch.cost import check_memory
    from rexsearch.errors import UserError

    monkeypatch.setattr(model, "build_model", lambda config: pytest.fail("built the network"))
    check_memory(get_preset("rexnet-1.0"), 224, available=10**9)
    with pytest.raises(
        UserError, match=r"too large to build it: it needs about 52\.8 MB .* than the 1\.0 MB"
    ):
        check_memory(get_preset("rexnet-1.0"), 224, available=10**6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cost", "--verify"], "too large to measure it with fvcore (--verify): it needs about 8.2 TB"),
        (["rank"], "too large to measure its rank: it needs about"),
        (["rank", "--preset", "rexnet-1.0", "--samples", "100000000"], "batch 100000000), more than the"),
    ],
)
def test_cli_refuses_networks_too_large_to_build(tmp_path, capsys, monkeypatch, argv, message):
    from rexsearch import model, rank
    from rexsearch.cli import main

    monkeypatch.setattr(model, "build_model", lambda config: pytest.fail("built the network"))
    monkeypatch.setattr(rank, "build_model", lambda config: pytest.fail("built the network"))
    path = tmp_path / "huge.json"
    path.write_text(_huge().to_json())
    source = [] if "--preset" in argv else ["--config", str(path)]
    assert main([*argv, *source]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rexsearch: error: the network is too large") and message in err
