"""The paper-reproduction spaces: fixed depth, piecewise-linear and stage-wise, inside their budgets."""

from __future__ import annotations

import pytest

from rexsearch.cost import measure_cost
from rexsearch.space import Budget, fixed_depth_layers, load_space

#: The budget the README's paper-reproduction commands use (MACs and params at 32x32).
BUDGET = Budget(25_000_000, 1_000_000, 32)


@pytest.mark.parametrize("blocks", [5, 9, 13])
@pytest.mark.parametrize("kind", ["", "-stagewise"])
def test_paper_spaces_decode_inside_their_budgets_at_32(blocks, kind):
    space = load_space(f"paper-{blocks}ib{kind}")
    candidates = space.sample(BUDGET, 4, seed=1)
    assert len(candidates) == 4
    for c in candidates:
        assert BUDGET.fits(c.cost), c.cost
        assert c.config.depth == blocks and c.config.num_classes == 100 and c.config.stem_stride == 1
        widths = c.config.out_channels
        assert list(widths) == sorted(widths)  # c_1 <= ... <= c_d
    cost = measure_cost(candidates[0].config, 32)  # fvcore agrees with the analytic count
    assert (cost.macs, cost.params) == (candidates[0].cost.macs, candidates[0].cost.params)


def test_stagewise_counterpart_is_constant_inside_stages():
    values = {"start": 24.0, "growth": 200.0, "slope1": 0.5, "slope2": 1.0, "slope3": 0.3}
    linear = load_space("paper-13ib").build(values, 1.0).out_channels
    steps = load_space("paper-13ib-stagewise").build(values, 1.0).out_channels
    layers = fixed_depth_layers(13)
    i = 0
    for n in layers:
        stage = steps[i : i + n]
        assert len(set(stage)) == 1 and stage[0] == linear[i]  # the stage takes f at its first block
        i += n
    assert len(set(linear)) == len(linear)  # the piecewise-linear profile grows at every block


def test_fixed_depth_layers():
    assert fixed_depth_layers(16) == (1, 2, 2, 3, 3, 5)
    for n in (1, 3, 5, 9, 13, 20):
        assert sum(fixed_depth_layers(n)) == n and fixed_depth_layers(n)[0] == 1
