"""Decoding under latency and channel-multiple budgets: the width search, the fill pass, the
window and the refusals.

Everything runs on tiny networks at 32x32 with coarse tables; no assertion is about time.
"""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from support.latency import RES, TINY_SPACE, draw_shapes

from rexsearch.cli import main
from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost
from rexsearch.errors import UserError
from rexsearch.principles import get_preset
from rexsearch.space import (
    Budget,
    Candidate,
    RandomTrial,
    check_feasible,
    load_space,
    parse_space,
)


def test_tiny_latency_budget_refuses_with_smallest_reachable_latency(table, space):
    budget = Budget(latency_ms=1e-5, latency_table=table, resolution=RES)
    with pytest.raises(UserError, match=r"smallest reachable latency is [\d.]+ ms predicted"):
        check_feasible(space, budget)


def test_latency_budget_alone_keeps_candidates_inside(table, space):
    reference = table.predict(draw_shapes(space, 1)[1])
    budget = Budget(latency_ms=reference, latency_table=table, resolution=RES)
    candidates = space.sample(budget, 10, seed=2)
    assert len(candidates) == 10
    for c in candidates:
        assert c.latency_ms == pytest.approx(table.predict(c.config))
        assert 0.97 * reference <= c.latency_ms <= reference
        assert c.to_dict()["latency_ms"] == c.latency_ms
        assert c.cost == count_cost(c.config, RES)  # counted once, for the candidate found
    # the solve skips MACs counting under a latency budget alone: with a params budget that
    # never binds (which counts every width tried) it must find the same candidates
    counted = Budget(params=10**12, latency_ms=reference, latency_table=table, resolution=RES)
    assert [c.config for c in space.sample(counted, 10, seed=2)] == [c.config for c in candidates]


def test_latency_and_macs_budgets_together(table, space):
    config = draw_shapes(space, 1)[1]
    macs = count_cost(config, RES).macs
    latency = table.predict(config)
    budget = Budget(macs, latency_ms=latency * 0.8, latency_table=table, resolution=RES)
    for c in space.sample(budget, 8, seed=4):
        assert c.cost.macs <= macs and c.latency_ms <= latency * 0.8
        assert c.cost.macs >= budget.lower or c.latency_ms >= 0.97 * latency * 0.8
    margin = Budget(latency_ms=latency, latency_table=table, resolution=RES, latency_margin=0.1)
    assert all(c.latency_ms <= 0.9 * latency for c in space.sample(margin, 5, seed=4))


@pytest.mark.parametrize("multiple", [8, 16])
def test_channel_multiple_rounds_every_width_inside_the_budget(table, space, multiple):
    reference = table.predict(draw_shapes(space, 1)[1])
    budget = Budget(
        latency_ms=reference * 1.5, latency_table=table, resolution=RES, channel_multiple=multiple
    )
    for c in space.sample(budget, 6, seed=1):
        widths = [c.config.stem_channels, c.config.penultimate_channels, *c.config.out_channels]
        assert all(w % multiple == 0 for w in widths)
        assert c.latency_ms <= reference * 1.5


@pytest.mark.parametrize("name", ["rexnet", "mobilenetv2", "piecewise"])
def test_channel_multiple_with_macs_budget_on_shipped_spaces(name):
    budget = Budget(400_000_000, channel_multiple=8)
    for c in load_space(name).sample(budget, 10, seed=0):
        widths = [c.config.stem_channels, c.config.penultimate_channels, *c.config.out_channels]
        assert all(w % 8 == 0 for w in widths)
        assert budget.lower <= c.cost.macs <= budget.macs
        assert count_cost(c.config) == c.cost


@pytest.mark.parametrize("name", ["rexnet", "mobilenetv2", "piecewise"])
def test_every_draw_on_multiples_of_8_decodes_into_the_macs_window(name):
    # one width step moved early blocks from 16 to 24 channels, over the 3% window, for about
    # a fifth of these draws; the fill pass raises late widths one multiple at a time instead
    space, budget = load_space(name), Budget(400_000_000, channel_multiple=8)
    rng = random.Random(7)
    for _ in range(40):
        c = space.decode(space.suggest(RandomTrial(rng)), budget)
        widths = c.config.out_channels
        assert budget.lower <= c.cost.macs <= budget.macs and count_cost(c.config) == c.cost
        assert all(w % 8 == 0 for w in [*widths, c.config.penultimate_channels])
        assert widths == sorted(widths)


def test_channel_multiple_in_the_space_file():
    text = TINY_SPACE.replace("  stem: 8\n", "  stem: 8\n  channel_multiple: 4\n")
    space = parse_space(text, "tiny4.yaml")
    for c in space.sample(Budget(5_000_000, resolution=RES), 5, seed=0):
        assert all(w % 4 == 0 for w in c.config.out_channels)


def test_cli_preview_refuses_a_tiny_budget_with_exit_2(table, space, tmp_path, capsys):
    table_path, space_path = tmp_path / "t.json", tmp_path / "tiny.yaml"
    table.save(table_path)
    space_path.write_text(TINY_SPACE)
    argv = [
        "latency-table",
        "preview",
        str(space_path),
        "--latency-table",
        str(table_path),
        "--resolution",
        "32",
    ]
    assert main([*argv, "--latency-budget", "0.00001ms"]) == 2
    assert "smallest reachable latency" in capsys.readouterr().err
    assert main([*argv, "--latency-budget", "12qs"]) == 2
    assert "--latency-budget must be a duration" in capsys.readouterr().err
    assert main([*argv[:3], "--latency-budget", "5ms"]) == 2
    assert "--latency-table" in capsys.readouterr().err
    budget = table.predict(draw_shapes(space, 1)[1]) * 1.5
    flags = ["--latency-budget", f"{budget}ms", "--channel-multiple", "8", "--json", "--sample", "2"]
    assert main([*argv, *flags]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(line["latency_ms"] <= budget for line in lines)
    assert all(w % 8 == 0 for line in lines for w in ReXNetConfig.from_dict(line["config"]).out_channels)


def _coarse_decodes(table, space, multiple: int) -> tuple[list[tuple[Budget, Candidate]], list[str]]:
    reference = table.predict(draw_shapes(space, 1)[1])
    decoded, failures = [], []
    for budget_ms in (reference * f for f in (1.3, 1.7, 2.2, 2.9)):
        budget = Budget(latency_ms=budget_ms, latency_table=table, resolution=RES, channel_multiple=multiple)
        for seed in range(3):
            values = space.suggest(RandomTrial(random.Random(seed)))
            try:
                decoded.append((budget, space.decode(values, budget)))
            except UserError as exc:
                failures.append(str(exc))
    return decoded, failures


def test_fill_pass_brings_coarse_rounding_into_the_latency_window(table, space, monkeypatch):
    import rexsearch.space.solve as solve

    # widths on multiples of 64 step the tiny space's prediction far more than the 3% window
    monkeypatch.setattr(solve, "FILL_SWEEPS", 0)
    before, unfilled = _coarse_decodes(table, space, 64)
    coarse = [m for m in unfilled if m.endswith("rounding steps are too coarse")]
    assert coarse
    monkeypatch.undo()
    decoded, failures = _coarse_decodes(table, space, 64)
    # only the budgets under even the narrowest network stay refused
    assert all(m.startswith("even the narrowest network") for m in failures)
    assert len(decoded) == len(before) + len(coarse)
    for budget, cand in decoded:
        widths = [b.out_channels for b in cand.config.blocks] + [cand.config.penultimate_channels]
        assert all(w % 64 == 0 for w in widths) and widths[:-1] == sorted(widths[:-1])
        assert 0.97 * budget.latency_ms <= cand.latency_ms <= budget.latency_ms
        assert cand.latency_ms == pytest.approx(table.predict(cand.config, RES))
        # the pass counts MACs only for the network it returns: its cost is that network's
        assert cand.cost == count_cost(cand.config, RES)


class _WidthTable:
    """A stand-in latency table whose "configs" are widths: it predicts ``ms(width)``."""

    blocked_alignment = None

    def __init__(self, ms):
        self.ms = ms

    def predict(self, width, resolution=None):
        return self.ms(width)


def _search(ms, limit, iterations=12):
    """The latency width search on ``ms``: the widths it tried, the kept width, its bracket."""
    import rexsearch.space.solve as solve

    budget = Budget(latency_ms=limit, latency_table=_WidthTable(ms), resolution=RES)
    tried = []

    def cost_at(w):
        tried.append(w)
        return w, None

    lo, hi = solve.WIDTH_RANGE
    (kept, _), a, b = solve.interpolation_search(cost_at, budget, (lo, None), (hi, None), lo, hi, iterations)
    return tried, kept, a, b


@pytest.mark.parametrize("limit", [0.5, 3.0, 40.0, 900.0])
def test_width_search_interpolates_to_a_smooth_latency_in_fewer_steps_than_bisection(limit):
    import rexsearch.space.solve as solve

    def ms(w):  # a fixed cost plus a power of the width, as a network's latency grows
        return 0.2 + 3.0 * w**1.7

    tried, kept, a, b = _search(ms, limit)
    # within 0.2% under the limit (or resolved to bisection's bracket) with fewer evaluations
    # than bisection's 12; every width kept was checked within the budget
    assert ms(kept) <= limit
    assert ms(kept) >= (1 - solve.CLOSE_ENOUGH) * limit or b - a <= math.log(800) / 2**12
    assert len(tried) <= 8, tried
    assert kept in tried


@pytest.mark.parametrize("seed", range(4))
def test_width_search_on_a_jumpy_latency_keeps_only_checked_widths_within_bisections_steps(seed):
    rng = random.Random(seed)
    jumps = {round(rng.uniform(0.1, 8.0), 3): rng.uniform(-0.2, 0.2) for _ in range(40)}

    def ms(w):  # rising in steps (rounded channels), some of them down (blocked kernels)
        w = math.floor(w * 8) / 8
        return (1.0 + 2.0 * w**1.5) * (1.0 + sum(d for x, d in jumps.items() if x <= w) / 10)

    # a limit inside a step at width 2: no width comes within 0.2% of it, so the search
    # narrows its bracket onto the step as bisection would
    limit = (ms(1.99) + ms(2.0)) / 2
    assert ms(1.99) < 0.99 * limit < limit < ms(2.0)
    tried, kept, a, b = _search(ms, limit)
    assert ms(kept) <= limit and math.exp(a) == pytest.approx(kept)
    assert ms(math.exp(b)) > limit
    assert b - a <= math.log(800) / 2**12 * (1 + 1e-9)
    assert len(tried) <= 13  # the ITP bound: bisection's 12 steps and one
    assert all(ms(w) > limit for w in tried if w > kept)  # it keeps the widest fitting width tried


def test_width_search_on_a_flat_staircase_ends_within_bisections_steps():
    def ms(w):  # flat steps: interpolation has no slope inside a step
        return float(math.floor(w * 4) + 1)

    # a limit between two steps: no width comes within 0.2% of it, so the bracket narrows
    tried, kept, a, b = _search(ms, 4.5)
    assert ms(kept) <= 4.5 and len(tried) <= 13
    assert kept < 1.0 <= math.exp(b) * (1 + 1e-9)  # the step at 1.0 is bracketed
    assert b - a <= math.log(800) / 2**12 * (1 + 1e-9)


def test_width_search_without_a_bracket_returns_the_narrowest():
    import rexsearch.space.solve as solve

    budget = Budget(latency_ms=1.0, latency_table=_WidthTable(lambda w: w), resolution=RES)
    tried = []
    kept, a, b = solve.interpolation_search(
        lambda w: tried.append(w) or (w, None), budget, (2.0, None), (2.0, None), 2.0, 2.0, 12
    )
    assert kept == (2.0, None) and a == b == math.log(2.0) and not tried


class _BlockedStandIn:
    """Predicts a block four times faster when its input channels are on a multiple of 4 (as
    ONNX Runtime runs blocked kernels), without telling the solver about it."""

    blocked_alignment = None  # the solver is not told

    def predict(self, config, resolution=None):
        ms, hw = 0.0, RES
        for b in config.blocks:
            hw //= b.stride
            work = (b.in_channels + b.out_channels) * b.dw_channels * hw * hw * 1e-6
            ms += work * (0.25 if b.in_channels % 4 == 0 else 1.0)
        return ms + config.penultimate_channels * 1e-3


class _BlockedTable(_BlockedStandIn):
    """The same predictions, with the table's ``blocked_alignment`` that the fill pass reads."""

    blocked_alignment = 4


def _decode_all(space, table, multiple=None):
    """Decodes 40 draws of ``space`` under five latency budgets: (limit, candidate) pairs and
    the number refused."""
    decoded, refused = [], 0
    for limit in (0.5, 1.0, 2.0, 4.0, 8.0):
        budget = Budget(latency_ms=limit, latency_table=table, resolution=RES, channel_multiple=multiple)
        for seed in range(40):
            try:
                decoded.append((limit, space.decode(space.suggest(RandomTrial(random.Random(seed))), budget)))
            except UserError:
                refused += 1
    return decoded, refused


def test_fill_pass_raises_widths_onto_a_tables_blocked_alignment(space, monkeypatch):
    import rexsearch.space.solve as solve

    sweeps = []  # (aligned raise first, window met) of every run of the sweeps
    fill = solve.raise_widths

    def recorded(*args, **kwargs):
        out = fill(*args, **kwargs)
        sweeps.append((kwargs["aligned_first"], out[2]))
        return out

    monkeypatch.setattr(solve, "raise_widths", recorded)
    plain, plain_refused = _decode_all(space, _BlockedStandIn())
    plain_sweeps = list(sweeps)
    assert all(not first for first, _ in plain_sweeps)  # no alignment known: one run, one raise
    sweeps.clear()
    aligned, aligned_refused = _decode_all(space, _BlockedTable())
    # one channel more can cost more than the budget leaves where a few more, onto the
    # alignment, cost less: knowing the alignment, the pass brings more draws into the window
    assert plain_refused > 0 and aligned_refused < plain_refused
    # the first run already tries the aligned raise where one channel does not fit ...
    first_met = sum(met for first, met in sweeps if not first)
    assert first_met > sum(met for _, met in plain_sweeps)
    # ... and reruns with it first only where it missed the window; the rerun brings some in
    for (first, met), (again, _) in itertools.pairwise(sweeps):
        if again:
            assert not first and not met
    rescued = sum(first and met for first, met in sweeps)
    assert rescued > 0
    for limit, cand in plain + aligned:
        assert 0.97 * limit <= cand.latency_ms <= limit
        assert cand.cost == count_cost(cand.config, RES)
        widths = cand.config.out_channels
        assert widths == sorted(widths)

    # the rerun's network is the one returned: without it, exactly the rescued draws are refused
    def no_rerun(*args, **kwargs):
        out = fill(*args, **kwargs)
        return (out[0], out[1], False) if kwargs["aligned_first"] else out

    monkeypatch.setattr(solve, "raise_widths", no_rerun)
    assert _decode_all(space, _BlockedTable())[1] == aligned_refused + rescued


@pytest.mark.parametrize("multiple", [2, 3, 8])
def test_aligned_raise_keeps_widths_on_the_channel_multiple(space, multiple):
    # a table built without a multiple serves any search: the raise onto the alignment (4)
    # goes to a common multiple of both, never off the search's multiple
    decoded, _ = _decode_all(space, _BlockedTable(), multiple)
    assert decoded
    for limit, cand in decoded:
        widths = [cand.config.stem_channels, *cand.config.out_channels, cand.config.penultimate_channels]
        assert all(w % multiple == 0 for w in widths), widths
        assert cand.latency_ms <= limit


def test_decode_under_a_latency_budget_interpolates():
    class Smooth:  # a latency that grows smoothly with every width of a full-size network
        predictions = 0

        def predict(self, config, resolution=None):
            self.predictions += 1
            work = sum((b.in_channels + b.out_channels) * b.dw_channels for b in config.blocks)
            return 0.1 + work * 1e-5

    space, table = load_space("rexnet"), Smooth()
    reference = table.predict(get_preset("rexnet-1.0"))
    table.predictions, draws = 0, 0
    for factor in (0.5, 1.0, 2.0):
        budget = Budget(latency_ms=reference * factor, latency_table=table)
        for seed in range(20):
            cand = space.decode(space.suggest(RandomTrial(random.Random(seed))), budget)
            assert 0.97 * budget.latency_ms <= cand.latency_ms <= budget.latency_ms
            draws += 1
    # bisection costs at least 16 predictions a draw (12 steps, both ends, the width found
    # and the candidate's; 18.2 measured here); the interpolation search needs fewer
    assert table.predictions / draws < 16


def test_coarse_rounding_under_a_latency_budget_alone_names_only_the_latency_window(
    table, space, monkeypatch
):
    import rexsearch.space.solve as solve

    # without the fill pass, multiples of 64 leave draws under the window: the message
    monkeypatch.setattr(solve, "FILL_SWEEPS", 0)
    reference = table.predict(draw_shapes(space, 1)[1])
    failures = []
    for budget_ms in (reference * f for f in (1.3, 1.7, 2.2, 2.9)):
        budget = Budget(latency_ms=budget_ms, latency_table=table, resolution=RES, channel_multiple=64)
        for seed in range(3):
            values = space.suggest(RandomTrial(random.Random(seed)))
            try:
                space.decode(values, budget)
            except UserError as exc:
                failures.append(str(exc))
    assert failures
    for message in failures:
        assert "MACs or" not in message and "(0 MACs" not in message
    steps = [m for m in failures if "under 97% of the latency budget (" in m]
    assert steps and all(m.endswith("rounding steps are too coarse") for m in steps)
