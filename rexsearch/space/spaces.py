"""A parsed space: its variables, how a draw becomes a candidate inside the budget, what it can reach.

:class:`Space` draws its variables from an Optuna trial (or :class:`RandomTrial`, a seeded
stand-in), builds the config through its generator and solves the width into the budget
(:func:`~rexsearch.space.solve.fit_budget`). :func:`check_feasible` refuses a budget the
space cannot meet before any trial runs, naming what the space can reach; the baselines are
the paper's ReXNet and MobileNetV2 scaled into the same budget (docs/architecture.md,
"Search spaces").
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rexsearch.config import ReXNetConfig
from rexsearch.cost import Cost, count_cost
from rexsearch.errors import ConfigError, UserError
from rexsearch.principles import linear_schedule, stagewise_schedule
from rexsearch.space.budget import Budget, Candidate, InfeasibleError
from rexsearch.space.generators import GENERATORS
from rexsearch.space.solve import WIDTH_RANGE, fit_budget

#: The format a space file declares (``format:``), and :meth:`Space.to_dict` writes.
SPACE_FORMAT = "rexsearch.space/1"


@dataclass(frozen=True)
class Variable:
    """One searched variable: categorical ``choices`` or a numeric range."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    kind: str = "float"  # "int" | "float" | "categorical"
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any) -> Any:
        """Draw the value from an Optuna trial (or a trial-like object)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high, "type": self.kind}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


class RandomTrial:
    """A seeded stand-in for an Optuna trial: uniform draws (log-uniform where asked)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.params[name] = self.rng.choice(choices)
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.params[name] = low + step * self.rng.randint(0, (high - low) // step)
        return self.params[name]

    def suggest_float(
        self, name: str, low: float, high: float, step: float | None = None, log: bool = False
    ) -> float:
        if log:
            value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
        else:
            value = self.rng.uniform(low, high)
        if step:
            value = low + round((value - low) / step) * step
        self.params[name] = value
        return value


@dataclass(frozen=True)
class Space:
    """A parsed, validated space file."""

    name: str
    generator: str
    variables: tuple[Variable, ...]
    fixed: dict[str, Any]
    description: str = ""
    path: str | None = None
    lines: dict[str, int] = field(default_factory=dict, compare=False)

    def defaults(self) -> dict[str, Any]:
        params, _ = GENERATORS[self.generator]
        return {name: p.default for name, p in params.items()} | self.fixed

    def build(
        self, values: Mapping[str, Any], width: float, channel_multiple: int | None = None
    ) -> ReXNetConfig:
        """The config for sampled ``values`` (fixed parts and defaults filled in) at ``width``;
        ``channel_multiple`` overrides the space's rounding of widths."""
        _, builder = GENERATORS[self.generator]
        p = {**self.defaults(), **values}
        if channel_multiple is not None:
            p["channel_multiple"] = channel_multiple
        return builder(p, width)

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {v.name: v.suggest(trial) for v in self.variables}

    def decode(
        self, values: Mapping[str, Any], budget: Budget, channel_multiple: int | None = None
    ) -> Candidate:
        """Solve the width for ``values`` so the candidate fits ``budget`` (widths rounded to
        ``channel_multiple``, else the budget's, else the space's)."""
        multiple = channel_multiple if channel_multiple is not None else budget.channel_multiple
        step = multiple if multiple is not None else int({**self.defaults(), **values}["channel_multiple"])
        config, cost, width = fit_budget(lambda w: self.build(values, w, multiple), budget, step=step)
        return Candidate(config, cost, dict(values), width, budget.predict_ms(config))

    def sample(self, budget: Budget, n: int, seed: int = 0, max_tries: int | None = None) -> list[Candidate]:
        """``n`` candidates from seeded uniform draws (infeasible draws are skipped)."""
        rng = random.Random(seed)
        out: list[Candidate] = []
        tries = 0
        limit = max_tries if max_tries is not None else 20 * n + 100
        while len(out) < n and tries < limit:
            tries += 1
            trial = RandomTrial(rng)
            values = self.suggest(trial)
            try:
                out.append(self.decode(values, budget))
            except InfeasibleError:
                continue
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPACE_FORMAT,
            "name": self.name,
            "generator": self.generator,
            "description": self.description,
            "fixed": dict(self.fixed),
            "variables": {v.name: v.to_dict() for v in self.variables},
        }


def _narrowest(space: Space, values: Mapping[str, Any], multiple: int | None) -> ReXNetConfig | None:
    """The config at the narrowest valid width (as :func:`fit_budget` searches it), or None."""
    w = WIDTH_RANGE[0]
    while w < WIDTH_RANGE[1]:
        try:
            return space.build(values, w, multiple)
        except ConfigError:
            w *= 1.25
    return None


def _narrowest_configs(space: Space, budget: Budget, samples: int, seed: int) -> list[ReXNetConfig]:
    """The narrowest valid configs of ``samples`` seeded random shapes of ``space`` (a shape
    without one is left out); a UserError when none has one."""
    rng = random.Random(seed)
    drawn = (space.suggest(RandomTrial(rng)) for _ in range(samples))
    configs = [c for c in (_narrowest(space, v, budget.channel_multiple) for v in drawn) if c is not None]
    if not configs:
        raise UserError(f"the space {space.name!r} yields no valid network at its narrowest width")
    return configs


def smallest_reachable(space: Space, budget: Budget, samples: int = 200, seed: int = 0) -> Cost:
    """The smallest cost over ``samples`` random shapes of ``space`` at the narrowest width."""
    costs = (count_cost(cfg, budget.resolution) for cfg in _narrowest_configs(space, budget, samples, seed))
    return min(costs, key=lambda c: (c.macs, c.params))


def smallest_reachable_latency(space: Space, budget: Budget, samples: int = 200, seed: int = 0) -> float:
    """The smallest predicted latency (ms) over ``samples`` random shapes at the narrowest width."""
    table = budget.latency_table
    if table is None:
        raise UserError("the smallest reachable latency needs a budget with a latency table")
    return min(
        table.predict(cfg, budget.resolution) for cfg in _narrowest_configs(space, budget, samples, seed)
    )


def largest_reachable(space: Space, budget: Budget, samples: int = 200, seed: int = 0) -> Cost:
    """The largest cost over ``samples`` random shapes of ``space`` at the widest width."""
    rng = random.Random(seed)
    best: Cost | None = None
    for _ in range(samples):
        values = space.suggest(RandomTrial(rng))
        try:
            c = count_cost(space.build(values, WIDTH_RANGE[1]), budget.resolution)
        except ConfigError:
            continue
        if best is None or c.macs > best.macs:
            best = c
    if best is None:
        raise UserError(f"the space {space.name!r} yields no valid network at its widest width")
    return best


def check_feasible(space: Space, budget: Budget, samples: int = 50, seed: int = 0) -> None:
    """Raise a UserError (before any trial runs) when the space cannot meet the budget."""
    if space.sample(budget, 1, seed=seed, max_tries=samples):
        return
    large = largest_reachable(space, budget, samples=50, seed=seed)
    if large.macs < budget.lower:
        raise UserError(
            f"the space {space.name!r} cannot reach a budget of {budget.macs:,} MACs at "
            f"{budget.resolution}x{budget.resolution}: the largest reachable cost is about {large.macs:,} "
            f"MACs ({large.params:,} params); lower --flops-budget or use a wider space"
        )
    small = smallest_reachable(space, budget, seed=seed)
    params = f" and {budget.params:,} params" if budget.params is not None else ""
    rounding = (
        f" with widths rounded to multiples of {budget.channel_multiple}" if budget.channel_multiple else ""
    )
    where = f"at {budget.resolution}x{budget.resolution}{rounding}"
    if budget.latency_ms is None:
        raise UserError(
            f"the space {space.name!r} cannot meet a budget of {budget.macs:,} MACs{params} {where}: "
            f"the smallest reachable cost is {small.macs:,} MACs and {small.params:,} params, and no "
            f"sampled shape landed in [{budget.lower:,}, {budget.macs:,}] MACs"
        )
    fastest = smallest_reachable_latency(space, budget, seed=seed)
    macs = f"{budget.macs:,} MACs, " if budget.macs is not None else ""
    margin = f" (less a {budget.latency_margin:.0%} margin)" if budget.latency_margin else ""
    raise UserError(
        f"the space {space.name!r} cannot meet a budget of {macs}{budget.latency_ms:g} ms{margin}{params} "
        f"{where}: the smallest reachable latency is {fastest:.2f} ms predicted (and the smallest "
        f"cost {small.macs:,} MACs, {small.params:,} params), and no sampled shape fit"
    )


# ---------------------------------------------------------------------------- baselines
BASELINES = ("rexnet-linear", "mobilenetv2-stagewise")


def baseline_candidate(name: str, budget: Budget, num_classes: int = 1000) -> Candidate:
    """A baseline scaled to the budget: ``rexnet-linear`` (the paper's linear ReXNet, by its
    width multiplier) or ``mobilenetv2-stagewise`` (MobileNetV2's stages, widths rounded to
    1 instead of 8 so that the budget window can be met); both round to the budget's
    ``channel_multiple`` when it has one."""
    multiple = budget.channel_multiple or 1
    if name == "rexnet-linear":

        def build(w: float) -> ReXNetConfig:
            return linear_schedule(width_mult=w, ch_div=multiple, num_classes=num_classes)

    elif name == "mobilenetv2-stagewise":

        def build(w: float) -> ReXNetConfig:
            return stagewise_schedule(width_mult=w, ch_div=multiple, num_classes=num_classes)

    else:
        raise UserError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    config, cost, width = fit_budget(build, budget, step=multiple)
    return Candidate(config, cost, {"width": round(width, 4)}, width, budget.predict_ms(config))


def baseline_configs(budget: Budget, num_classes: int = 1000) -> dict[str, Candidate]:
    """The baselines that can be scaled into ``budget`` (an infeasible one is left out)."""
    out = {}
    for name in BASELINES:
        try:
            out[name] = baseline_candidate(name, budget, num_classes)
        except InfeasibleError:
            continue
    return out
