"""Search spaces: YAML file -> Optuna distributions -> ReXNetConfig inside the budget.

A space file (format ``rexsearch.space/1``) names a ``generator`` (how the variables
become a channel schedule), the searched ``variables`` (each ``{choices: [...]}`` or
``{low, high[, type, log, step]}``) and the ``fixed`` arguments. The width multiplier is
never sampled: after the shape variables are drawn, :func:`fit_budget` solves it by
bisection on the analytic cost so that every candidate's MACs land in
``[0.97 * budget, budget]`` (and its parameters under the params budget, when given).

Generators:

* ``linear`` — the paper's principles (:func:`~rexsearch.principles.expand_layers_schedule`):
  the fraction of blocks that expand, start width and total growth of a linear schedule,
  nonlinearities, expansion ratio, SE per stage and its ratio, penultimate width, depth.
  The width multiplier scales every width, stem and start included (the reference keeps
  those two at their 1.0x value below 1.0x, which would put small budgets out of reach).
* ``stagewise`` — MobileNetV2-like: constant width inside each of 7 stages, per-stage
  width ratios and depths.
* ``piecewise`` — the CVPR version's ``c_i = a * f(i) + b`` with ``f`` piecewise linear
  (non-decreasing, three segments whose slopes are sampled), on ReXNet's stage plan.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rexsearch.config import ACTIVATIONS, SHORTCUTS, ReXNetConfig
from rexsearch.cost import Cost, count_cost
from rexsearch.errors import ConfigError, UserError
from rexsearch.principles import (
    MOBILENETV2_STAGES,
    REXNET_STAGE_LAYERS,
    StagePlan,
    config_from_widths,
    expand_layers_schedule,
    linear_schedule,
    make_divisible,
    stagewise_schedule,
)

if TYPE_CHECKING:
    from rexsearch.latency import LatencyTable

SPACE_FORMAT = "rexsearch.space/1"
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
LOWER_FRACTION = 0.97
WIDTH_RANGE = (0.02, 16.0)


class SpaceError(UserError):
    """A space file is malformed; the message names the file, line, key and allowed values."""


class InfeasibleError(UserError):
    """No width puts this candidate inside the budget window."""


# ---------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    """A generator argument: its kind and the values it allows."""

    kind: str  # "int", "float", "bool", "choice"
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def check(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else a description of what is allowed."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "true or false"
        if self.kind == "choice":
            return None if value in (self.choices or ()) else ", ".join(map(str, self.choices or ()))
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "int" and not (numeric and float(value).is_integer()):
            return f"integers in [{self.low:g}, {self.high:g}]"
        if not numeric or not self.low <= value <= self.high:
            return f"{'integers' if self.kind == 'int' else 'numbers'} in [{self.low:g}, {self.high:g}]"
        return None


def _common_params() -> dict[str, Param]:
    return {
        "activation": Param("choice", "silu", choices=ACTIVATIONS),
        "dw_activation": Param("choice", "relu6", choices=ACTIVATIONS),
        "expansion": Param("int", 6, 1, 6),
        "kernel": Param("choice", 3, choices=(3, 5, 7)),
        "se_ratio": Param("int", 12, 1, 64),
        "stem": Param("int", 32, 4, 128),
        "penultimate": Param("int", 1280, 16, 4096),
        "num_classes": Param("int", 1000, 1, 100000),
        "dropout": Param("float", 0.2, 0.0, 0.9),
        "shortcut": Param("choice", "partial", choices=SHORTCUTS),
        "channel_multiple": Param("int", 1, 1, 128),
    }


def _se_params(defaults: tuple[bool, ...]) -> dict[str, Param]:
    return {f"se_stage{i + 1}": Param("bool", d) for i, d in enumerate(defaults)}


LINEAR_PARAMS: dict[str, Param] = {
    **_common_params(),
    "depth_mult": Param("float", 1.0, 0.25, 3.0),
    "expand_fraction": Param("float", 1.0, 0.0, 1.0),
    "start": Param("float", 16, 4, 256),
    "growth": Param("float", 180, 0, 2048),
    **_se_params((False, False, True, True, True, True)),
}
STAGEWISE_PARAMS: dict[str, Param] = {
    **_common_params(),
    "start": Param("float", 16, 4, 256),
    **{f"ratio{i}": Param("float", r, 1.0, 4.0) for i, r in enumerate((1.5, 4 / 3, 2.0, 1.5, 5 / 3, 2.0), 2)},
    **{f"depth{i}": Param("int", n, 1, 8) for i, (_, _, n, _) in enumerate(MOBILENETV2_STAGES, 1)},
    **_se_params((False,) * 7),
}
STAGEWISE_PARAMS.update(
    activation=Param("choice", "relu6", choices=ACTIVATIONS),
    shortcut=Param("choice", "identity", choices=SHORTCUTS),
)
PIECEWISE_PARAMS: dict[str, Param] = {
    **_common_params(),
    "depth_mult": Param("float", 1.0, 0.25, 3.0),
    "start": Param("float", 16, 4, 256),
    "growth": Param("float", 180, 0, 2048),
    "slope1": Param("float", 1.0, 0.0, 1.0),
    "slope2": Param("float", 1.0, 0.0, 1.0),
    "slope3": Param("float", 1.0, 0.0, 1.0),
    "blocks": Param("int", 0, 0, 64),
    "steps": Param("bool", False),
    "stem_stride": Param("choice", 2, choices=(1, 2)),
    **_se_params((False, False, True, True, True, True)),
}


def _se_tuple(p: Mapping[str, Any], n: int) -> tuple[bool, ...]:
    return tuple(bool(p[f"se_stage{i + 1}"]) for i in range(n))


def _common_kwargs(p: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "activation": p["activation"],
        "dw_activation": p["dw_activation"],
        "se_ratio": int(p["se_ratio"]),
        "num_classes": int(p["num_classes"]),
        "dropout": float(p["dropout"]),
        "shortcut": p["shortcut"],
    }


def _build_linear(p: Mapping[str, Any], width: float) -> ReXNetConfig:
    plan = StagePlan(se=_se_tuple(p, 6), expansion=int(p["expansion"])).scaled(float(p["depth_mult"]))
    n_expand = round(float(p["expand_fraction"]) * (plan.depth - 1))
    return expand_layers_schedule(
        n_expand,
        width_mult=width,
        start=float(p["start"]),
        final_increment=float(p["growth"]),
        stem=int(p["stem"]),
        penultimate=int(p["penultimate"]),
        plan=plan,
        ch_div=int(p["channel_multiple"]),
        kernel=int(p["kernel"]),
        keep_small=False,
        **_common_kwargs(p),
    )


def _build_stagewise(p: Mapping[str, Any], width: float) -> ReXNetConfig:
    channels = [float(p["start"])]
    for i in range(2, 8):
        channels.append(channels[-1] * float(p[f"ratio{i}"]))
    stages = [
        (1 if i == 0 else int(p["expansion"]), c, int(p[f"depth{i + 1}"]), s)
        for i, (c, (_, _, _, s)) in enumerate(zip(channels, MOBILENETV2_STAGES, strict=True))
    ]
    return stagewise_schedule(
        stages,
        width_mult=width,
        stem=int(p["stem"]),
        penultimate=int(p["penultimate"]),
        ch_div=int(p["channel_multiple"]),
        se=_se_tuple(p, 7),
        kernel=int(p["kernel"]),
        **_common_kwargs(p),
    )


def _round_width(value: float, multiple: int) -> int:
    """``round`` (at least 1), or the nearest multiple of ``multiple`` (:func:`make_divisible`)."""
    return max(1, round(value)) if multiple <= 1 else make_divisible(value, multiple)


def _piecewise_f(x: float, slopes: tuple[float, float, float]) -> float:
    """Non-decreasing piecewise-linear f on [0, 1] with f(0)=0, f(1)=1, knots at 1/3, 2/3."""
    total = sum(slopes) or 3.0
    s = slopes if sum(slopes) else (1.0, 1.0, 1.0)
    value, left = 0.0, 0.0
    for k in range(3):
        right = (k + 1) / 3
        seg = min(max(x - left, 0.0), right - left)
        value += s[k] * seg * 3 / total
        left = right
    return value


def fixed_depth_layers(blocks: int, layers: Sequence[int] = REXNET_STAGE_LAYERS) -> tuple[int, ...]:
    """Stage lengths totalling ``blocks``, in proportion to ``layers`` (one block per stage first;
    below six blocks the stride-1 fifth stage is left out, then the others from the last)."""
    stages = len(layers)
    counts = [1] * stages
    drop = [4, *(i for i in range(stages - 1, 0, -1) if i != 4)]  # never the first stage
    for i in drop[: max(0, stages - blocks)]:
        counts[i] = 0
    total = sum(layers)
    while sum(counts) < blocks:
        deficit = [blocks * n / total - c for n, c in zip(layers, counts, strict=True)]
        counts[max(range(stages), key=lambda i: (deficit[i], i))] += 1
    return tuple(counts)


def _build_piecewise(p: Mapping[str, Any], width: float) -> ReXNetConfig:
    plan = StagePlan(se=_se_tuple(p, 6), expansion=int(p["expansion"])).scaled(float(p["depth_mult"]))
    if int(p["blocks"]):  # a fixed depth (the paper's CIFAR searches: 5, 9 or 13 blocks)
        plan = replace(plan, layers=fixed_depth_layers(int(p["blocks"])))
    d = plan.depth
    slopes = (float(p["slope1"]), float(p["slope2"]), float(p["slope3"]))
    a, b = float(p["growth"]), float(p["start"])
    position = list(range(d))
    if p["steps"]:  # the stage-wise counterpart: each stage as wide as f at its first block
        starts = itertools.accumulate((0, *plan.layers[:-1]))
        position = [s for s, n in zip(starts, plan.layers, strict=True) for _ in range(n)]
    raw = [b + a * _piecewise_f(position[i] / max(d - 1, 1), slopes) for i in range(d)]
    m = int(p["channel_multiple"])
    widths = [_round_width(c * width, m) for c in raw]
    return config_from_widths(
        _round_width(int(p["stem"]) * width, m),
        widths,
        plan.block_strides(),
        plan.block_expansions(),
        plan.block_se(),
        int(p["kernel"]),
        penultimate_channels=(
            max(1, int(int(p["penultimate"]) * width))
            if m <= 1
            else make_divisible(int(p["penultimate"]) * width, m)
        ),
        stem_stride=int(p["stem_stride"]),
        **_common_kwargs(p),
    )


GENERATORS: dict[str, tuple[dict[str, Param], Callable[[Mapping[str, Any], float], ReXNetConfig]]] = {
    "linear": (LINEAR_PARAMS, _build_linear),
    "stagewise": (STAGEWISE_PARAMS, _build_stagewise),
    "piecewise": (PIECEWISE_PARAMS, _build_piecewise),
}


# ---------------------------------------------------------------------------- variables
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


class _RandomTrial:
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


# ---------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Candidate:
    """A decoded sample: the config inside the budget, its cost, and the variables drawn."""

    config: ReXNetConfig
    cost: Cost
    sampled: dict[str, Any]
    width: float
    latency_ms: float | None = None  # predicted, when the budget has a latency

    def to_dict(self) -> dict[str, Any]:
        out = {
            "config": self.config.to_dict(),
            "macs": self.cost.macs,
            "params": self.cost.params,
            "sampled": self.sampled,
        }
        if self.latency_ms is not None:
            out["latency_ms"] = self.latency_ms
        return out


@dataclass(frozen=True)
class Budget:
    """MACs budget (and optional params and latency budgets) at a resolution.

    Every budget given is an upper bound. Without a latency budget the MACs must land in
    [0.97 B, B]. With one (``latency_ms``, predicted by ``latency_table``, kept under
    ``latency_ms * (1 - latency_margin)``), the binding budget must be met within 3%:
    the MACs in [0.97 B, B] or the predicted latency in the top 3% of its limit; without a
    MACs budget only the latency constrains the width. ``channel_multiple`` rounds every
    width (stem, blocks, penultimate) to a multiple of it, overriding the space's own.
    """

    macs: int | None = None
    params: int | None = None
    resolution: int = 224
    latency_ms: float | None = None
    latency_table: LatencyTable | None = field(default=None, compare=False, repr=False)
    latency_margin: float = 0.0
    channel_multiple: int | None = None

    def __post_init__(self) -> None:
        if self.macs is None and self.latency_ms is None:
            raise UserError("a budget needs MACs (--flops-budget) or a latency (--latency-budget)")
        if self.latency_ms is not None and self.latency_table is None:
            raise UserError("a latency budget needs a latency table (--latency-table FILE)")
        if not 0.0 <= self.latency_margin < 1.0:
            raise UserError(f"the latency margin must be in [0, 1), got {self.latency_margin}")
        if self.channel_multiple is not None and not 1 <= self.channel_multiple <= 128:
            raise UserError(f"the channel multiple must be in 1..128, got {self.channel_multiple}")

    @property
    def lower(self) -> int:
        """The lower edge of the MACs window (0 without a MACs budget)."""
        return 0 if self.macs is None else math.ceil(LOWER_FRACTION * self.macs)

    @property
    def latency_limit(self) -> float | None:
        """The predicted latency a candidate must stay under (the budget less the margin)."""
        return None if self.latency_ms is None else self.latency_ms * (1.0 - self.latency_margin)

    def predict_ms(self, config: ReXNetConfig) -> float | None:
        """Predicted latency of ``config`` by the budget's table (None without a latency budget)."""
        if self.latency_table is None or self.latency_ms is None:
            return None
        return self.latency_table.predict(config, self.resolution)

    def within(self, cost: Cost, latency_ms: float | None = None) -> bool:
        """Under every upper bound (MACs, params, predicted latency)."""
        limit = self.latency_limit
        return (
            (self.macs is None or cost.macs <= self.macs)
            and (self.params is None or cost.params <= self.params)
            and (limit is None or (latency_ms is not None and latency_ms <= limit))
        )

    def tight(self, cost: Cost, latency_ms: float | None = None) -> bool:
        """The binding budget is met within 3% (see the class docstring)."""
        if self.latency_ms is None:
            return cost.macs >= self.lower
        macs_tight = self.macs is not None and cost.macs >= self.lower
        limit = self.latency_limit or 0.0
        return macs_tight or (latency_ms is not None and latency_ms >= LOWER_FRACTION * limit)

    def fits(self, cost: Cost, latency_ms: float | None = None) -> bool:
        return self.within(cost, latency_ms) and self.tight(cost, latency_ms)


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
            trial = _RandomTrial(rng)
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


#: Bisection steps of the width search: 18 resolve one channel of the widest layer; under a
#: latency budget the interpolation search resolves at most the bracket 12 steps leave (0.2%
#: of width, far inside the 3% window and the predictor's own error).
WIDTH_ITERATIONS = 18
LATENCY_WIDTH_ITERATIONS = 12


#: Under a latency budget the width search stops once a checked width is predicted within
#: this share under the limit (far inside the 3% window and the predictor's own error).
CLOSE_ENOUGH = 0.002

#: Sweeps of :func:`fill_window` over the network's widths at most.
FILL_SWEEPS = 8


def fill_window(config: ReXNetConfig, cost: Cost, budget: Budget, step: int = 1) -> tuple[ReXNetConfig, Cost]:
    """Raise single widths by ``step`` (or onto a table's blocked alignment) until ``config``
    meets the budget's window, if it can.

    A width multiplier moves every channel count at once, and on multiples of 8 one step
    of it can raise an early, high-resolution block from 16 to 24 channels: more than the
    3% window. This pass sweeps from the network's end to its start (the penultimate conv,
    then the blocks from the last), raising one width by ``step`` at a time where the
    result stays within every budget and a block stays no wider than the next; it stops as
    soon as the window is met. Late widths move MACs, params and latency in the smallest
    steps, so the filled network is mostly the solved width's with a few of its last widths
    one multiple wider; where the solve stalled on a narrow network, the tail can grow by
    several multiples. Returns the widest network reached when the window cannot be met
    (the caller then refuses it).

    On a latency table with a blocked alignment (ONNX Runtime without a channel multiple),
    a block's input channels on the alignment run faster, so one channel more can cost
    more than the budget leaves while a few more, onto the alignment, cost less: where a
    raise by ``step`` does not fit, the raise to the width's next multiple of the alignment
    (of the least common multiple of it and ``step``, so that widths stay on ``step``) is
    tried; and where the sweeps still miss the window, they run once more from the start
    with the aligned raise tried first.
    """
    table = budget.latency_table if budget.latency_ms is not None else None
    align = math.lcm(getattr(table, "blocked_alignment", None) or 1, step)
    align = align if align > step else 0
    filled, counted, tight = _fill(config, cost, budget, step, align, aligned_first=False)
    if not tight and align:
        again, again_counted, again_tight = _fill(config, cost, budget, step, align, aligned_first=True)
        if again_tight:
            filled, counted = again, again_counted
    return filled, counted or count_cost(filled, budget.resolution)


def _fill(
    config: ReXNetConfig, cost: Cost, budget: Budget, step: int, align: int, aligned_first: bool
) -> tuple[ReXNetConfig, Cost | None, bool]:
    """The sweeps of :func:`fill_window`: the network reached, its cost where counted, and
    whether it meets the window."""

    def with_widths(widths: list[int], penultimate: int) -> ReXNetConfig | None:
        blocks, previous = [], config.stem_channels
        for block, width in zip(config.blocks, widths, strict=True):
            blocks.append(replace(block, in_channels=previous, out_channels=width))
            previous = width
        try:
            return replace(config, blocks=tuple(blocks), penultimate_channels=penultimate)
        except ConfigError:
            return None

    widths = [b.out_channels for b in config.blocks]
    penultimate = config.penultimate_channels
    # Under a latency budget alone no raise needs a MACs count: only the network returned does.
    need_cost = budget.macs is not None or budget.params is not None or budget.latency_ms is None
    counted: Cost | None = cost
    for _ in range(FILL_SWEEPS):
        raised = False
        for i in range(len(widths), -1, -1):  # len(widths): the penultimate conv
            raises = [step]
            aligned = align - widths[i] % align if align and i < len(widths) else step
            if aligned != step and (widths[i] + aligned) % step == 0:  # onto the alignment
                raises = [aligned, step] if aligned_first else [step, aligned]
            for by in raises:
                trial_widths, trial_pen = list(widths), penultimate
                if i == len(widths):
                    trial_pen += by
                else:
                    if i + 1 < len(widths) and widths[i] + by > widths[i + 1]:
                        continue
                    trial_widths[i] += by
                cfg = with_widths(trial_widths, trial_pen)
                if cfg is None:
                    continue
                c = count_cost(cfg, budget.resolution) if need_cost else None
                if c is not None and not budget.within(c, 0.0):
                    continue
                latency = budget.predict_ms(cfg)
                if latency is not None and latency > (budget.latency_limit or 0.0):
                    continue
                widths, penultimate, config, counted, raised = trial_widths, trial_pen, cfg, c, True
                if budget.tight(counted or cost, latency):  # ``cost`` unread without a MACs budget
                    return config, counted, True
                break
        if not raised:
            break
    return config, counted, False


def fit_budget(
    build: Callable[[float], ReXNetConfig],
    budget: Budget,
    iterations: int | None = None,
    step: int = 1,
) -> tuple[ReXNetConfig, Cost, float]:
    """Largest width (bisection in log space, then nearby round numbers) whose config fits the budget.

    Under a latency budget, whose every width costs a prediction, an interpolation search
    (:func:`_interpolation_search`) takes the bisection's place: 6-12 widths tried on
    average over the shipped spaces where bisection tries 12, to a width as close to the
    limit (per draw in all, with the ends, round numbers and fill pass, 16.2 predictions
    instead of 18.2 for ``rexnet.yaml`` on a torch table).

    MACs and params never decrease with the width (every channel count is a rounded,
    non-decreasing function of it), and neither does the predicted latency (the table is
    monotone in every channel count), so bisection finds the boundary. An ONNX Runtime table
    with a blocked alignment predicts a width on it faster than one just below it, as the
    runtime runs it; bisection then finds a boundary, and every width it keeps was checked
    within the budget. Where one rounding
    step of the width jumps over the window, :func:`fill_window` raises single widths by
    ``step`` (the channel multiple) into it. Raises :class:`InfeasibleError` when even the
    smallest width is over budget, or when the network still stays under the window's
    lower edge (rounding steps or another budget bind first).
    """
    lo, hi = WIDTH_RANGE
    if iterations is None:
        iterations = WIDTH_ITERATIONS if budget.latency_ms is None else LATENCY_WIDTH_ITERATIONS
    # Under a latency budget alone the bisection needs no MACs count: only the one found does.
    need_cost = budget.macs is not None or budget.params is not None

    def cost_at(w: float) -> tuple[ReXNetConfig, Cost | None] | None:
        try:
            cfg = build(w)
        except ConfigError:  # too narrow to be valid (e.g. no SE channels left)
            return None
        return cfg, count_cost(cfg, budget.resolution) if need_cost else None

    def cost_of(found: tuple[ReXNetConfig, Cost | None]) -> Cost:
        return found[1] if found[1] is not None else count_cost(found[0], budget.resolution)

    def ok(found: tuple[ReXNetConfig, Cost | None]) -> bool:
        cfg, c = found
        if c is not None and not budget.within(c, 0.0):  # MACs and params first: no prediction
            return False
        limit = budget.latency_limit
        if limit is None:
            return True
        latency = budget.predict_ms(cfg)
        return latency is not None and latency <= limit

    narrowest = cost_at(lo)
    while narrowest is None and lo < hi:
        lo *= 1.25
        narrowest = cost_at(lo)
    if narrowest is None:
        raise InfeasibleError("no width gives a valid network of this shape")
    best_cfg, best = narrowest
    if not ok(narrowest):
        c = cost_of(narrowest)
        latency = budget.predict_ms(best_cfg)
        predicted = f" and {latency:.2f} ms predicted" if latency is not None else ""
        raise InfeasibleError(
            f"even the narrowest network of this shape needs {c.macs:,} MACs, {c.params:,} params{predicted}"
        )
    widest = cost_at(hi)
    if widest is not None and ok(widest):
        (best_cfg, best), lo = widest, hi
    else:
        if budget.latency_ms is None:
            llo, lhi = math.log(lo), math.log(hi)
            for _ in range(iterations):
                mid = math.exp((llo + lhi) / 2)
                found = cost_at(mid)
                if found is None:
                    llo = math.log(mid)
                elif ok(found):
                    llo, (best_cfg, best) = math.log(mid), found
                else:
                    lhi = math.log(mid)
        else:  # each prediction costs more than a MACs count: interpolate (see the helper)
            (best_cfg, best), llo, lhi = _interpolation_search(
                cost_at, budget, narrowest, widest, lo, hi, iterations
            )
        lo = math.exp(llo)
        # Round widths (1.0, 1.25, ...) sit exactly on rounding boundaries that bisection
        # only approaches; try the nearby round numbers and keep the largest fitting one.
        for digits in (1, 2, 3):
            w = round(math.exp(lhi), digits)
            found = cost_at(w) if lo < w else None
            if found is not None and ok(found):
                best, cost = cost_of((best_cfg, best)), cost_of(found)
                if cost.macs > best.macs:
                    (best_cfg, best), lo = (found[0], cost), w
    best = cost_of((best_cfg, best))
    latency = budget.predict_ms(best_cfg)
    if not budget.tight(best, latency):
        best_cfg, best = fill_window(best_cfg, best, budget, step)
        latency = budget.predict_ms(best_cfg)
    if not budget.tight(best, latency):
        if budget.latency_ms is None:
            why = (
                "the params budget binds first"
                if budget.params is not None
                else "rounding steps are too coarse"
            )
            raise InfeasibleError(
                f"the widest fitting network has {best.macs:,} MACs, under {budget.lower:,} "
                f"(97% of the budget); {why}"
            )
        limit = budget.latency_limit or 0.0
        ms = f"{LOWER_FRACTION * limit:.2f} ms"
        latency_window = "latency budget less the margin" if budget.latency_margin else "latency budget"
        window = (
            f"97% of the binding budget ({budget.lower:,} MACs or {ms})"
            if budget.macs is not None
            else f"97% of the {latency_window} ({ms})"
        )
        why = (
            "the params budget or rounding steps bind first"
            if budget.params
            else "rounding steps are too coarse"
        )
        raise InfeasibleError(
            f"the widest fitting network has {best.macs:,} MACs and {latency:.2f} ms predicted, "
            f"under {window}; {why}"
        )
    return best_cfg, best, lo


def _judge(found: tuple[ReXNetConfig, Cost | None], budget: Budget) -> tuple[bool, float]:
    """Whether ``found`` is within a latency budget (and any MACs and params budgets beside
    it), and how far it is over the tightest of them as the log of value / limit."""
    cfg, cost = found
    limit = budget.latency_limit or 0.0
    predicted = budget.predict_ms(cfg)
    latency = math.inf if predicted is None else predicted  # no prediction: over, as ok() has it
    within = latency <= limit and (cost is None or budget.within(cost, 0.0))
    ratio = latency / limit if limit > 0 else 1.0
    if cost is not None and budget.macs is not None:
        ratio = max(ratio, cost.macs / budget.macs)
    if cost is not None and budget.params is not None:
        ratio = max(ratio, cost.params / budget.params)
    excess = math.log(max(ratio, 1e-300))
    return within, (min(excess, 0.0) if within else max(excess, 0.0))


def _interpolation_search(
    cost_at: Callable[[float], tuple[ReXNetConfig, Cost | None] | None],
    budget: Budget,
    narrowest: tuple[ReXNetConfig, Cost | None],
    widest: tuple[ReXNetConfig, Cost | None] | None,
    lo: float,
    hi: float,
    iterations: int,
) -> tuple[tuple[ReXNetConfig, Cost | None], float, float]:
    """The fitting boundary between ``lo`` (fits) and ``hi`` (does not) under a latency
    budget, by the ITP method (Oliveira and Takahashi, 2021) in log width against the log of
    the budget's excess (:func:`_judge`).

    Near the boundary the predicted latency grows about as a power of the width, so the
    excess is close to linear in log width there and interpolation reaches it in fewer
    steps than bisection. The search stops once a width is predicted within
    :data:`CLOSE_ENOUGH` under the limit, or when the bracket is as narrow as ``iterations``
    bisection steps leave it; ITP's projection bounds it by ``iterations`` + 1 steps on any
    prediction (a staircase of rounded channels, a non-monotone table). Like bisection,
    every width it keeps was checked within the budget. Returns the widest fitting network
    tried and the final bracket (log widths).
    """
    a, b = math.log(lo), math.log(hi)
    if b <= a:  # no bracket to search (the narrowest valid width is the widest tried)
        return narrowest, a, b
    eps = (b - a) / 2 ** (iterations + 1)  # stop when b - a <= 2 eps, as bisection would
    n_max = iterations + 1
    kappa1 = 0.2 / (b - a)
    ya = _judge(narrowest, budget)[1]
    yb = _judge(widest, budget)[1] if widest is not None else None
    best = narrowest
    close = -math.log1p(-CLOSE_ENOUGH)
    j = 0
    while b - a > 2 * eps and j < n_max and ya < -close:
        half = (a + b) / 2
        r = eps * 2 ** (n_max - j) - (b - a) / 2
        if yb is None or not math.isfinite(yb) or yb <= ya:  # no usable slope: bisect
            x = half
        else:
            falsi = (yb * a - ya * b) / (yb - ya)
            sigma = 1.0 if half >= falsi else -1.0
            delta = kappa1 * (b - a) ** 2
            target = falsi + sigma * delta if delta <= abs(half - falsi) else half
            x = target if abs(target - half) <= r else half - sigma * r
        j += 1
        found = cost_at(math.exp(x))
        if found is None:  # too narrow to be valid: the boundary is above
            a = x
        else:
            within, excess = _judge(found, budget)
            if within:
                a, ya, best = x, excess, found
            else:
                b, yb = x, excess
    return best, a, b


def _narrowest(space: Space, values: Mapping[str, Any], multiple: int | None) -> ReXNetConfig | None:
    """The config at the narrowest valid width (as :func:`fit_budget` searches it), or None."""
    w = WIDTH_RANGE[0]
    while w < WIDTH_RANGE[1]:
        try:
            return space.build(values, w, multiple)
        except ConfigError:
            w *= 1.25
    return None


def smallest_reachable(space: Space, budget: Budget, samples: int = 200, seed: int = 0) -> Cost:
    """The smallest cost over ``samples`` random shapes of ``space`` at the narrowest width."""
    rng = random.Random(seed)
    best: Cost | None = None
    for _ in range(samples):
        cfg = _narrowest(space, space.suggest(_RandomTrial(rng)), budget.channel_multiple)
        if cfg is None:
            continue
        c = count_cost(cfg, budget.resolution)
        if best is None or (c.macs, c.params) < (best.macs, best.params):
            best = c
    if best is None:
        raise UserError(f"the space {space.name!r} yields no valid network at its narrowest width")
    return best


def smallest_reachable_latency(space: Space, budget: Budget, samples: int = 200, seed: int = 0) -> float:
    """The smallest predicted latency (ms) over ``samples`` random shapes at the narrowest width."""
    if budget.latency_table is None:
        raise UserError("the smallest reachable latency needs a budget with a latency table")
    rng = random.Random(seed)
    best = math.inf
    for _ in range(samples):
        cfg = _narrowest(space, space.suggest(_RandomTrial(rng)), budget.channel_multiple)
        if cfg is not None:
            best = min(best, budget.latency_table.predict(cfg, budget.resolution))
    if best == math.inf:
        raise UserError(f"the space {space.name!r} yields no valid network at its narrowest width")
    return best


def largest_reachable(space: Space, budget: Budget, samples: int = 200, seed: int = 0) -> Cost:
    """The largest cost over ``samples`` random shapes of ``space`` at the widest width."""
    rng = random.Random(seed)
    best: Cost | None = None
    for _ in range(samples):
        values = space.suggest(_RandomTrial(rng))
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


# ---------------------------------------------------------------------------- loading
def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _to_python(node: yaml.Node, err: Callable[[int, str], SpaceError]) -> Any:
    try:
        return yaml.safe_load(yaml.serialize(node))
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # e.g. ``!!int abc``
        raise err(_line(node), f"the value cannot be read ({exc})") from None


#: Limits on a space file (the shipped ones are about 2 kB, 100 nodes, 4 levels deep).
MAX_SPACE_CHARS = 1_000_000
MAX_SPACE_DEPTH = 32
MAX_SPACE_NODES = 10_000
_PLAIN_TAGS = {
    "!",
    *(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")),
}


def _check_shape(text: str, err: Callable[[int, str], SpaceError]) -> None:
    """Refuse what a plain space file never needs, before anything is built from it.

    Tags other than the plain ones (``!!python/...`` and friends), nesting deeper than
    :data:`MAX_SPACE_DEPTH`, and more than :data:`MAX_SPACE_NODES` values counting what
    aliases expand to (so a "billion laughs" document is refused without expanding it).
    """
    if len(text) > MAX_SPACE_CHARS:
        raise err(1, f"the file has {len(text):,} characters; a space file is at most {MAX_SPACE_CHARS:,}")
    sizes: dict[str, int] = {}
    open_anchors: list[tuple[str | None, int]] = []
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _PLAIN_TAGS:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise err(
                line, f"the tag {shown} is not allowed; a space file holds plain values, lists and mappings"
            )
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                raise err(line, f"the alias *{event.anchor} refers to a value that contains it")
            total += sizes[event.anchor]
        elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            total += 1
            if isinstance(event, yaml.ScalarEvent):
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            else:
                open_anchors.append((event.anchor, total))
                if len(open_anchors) > MAX_SPACE_DEPTH:
                    raise err(line, f"values are nested deeper than {MAX_SPACE_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, start = open_anchors.pop()
            if anchor is not None:
                sizes[anchor] = total - start + 1
        if total > MAX_SPACE_NODES:
            raise err(
                line,
                f"the file expands to more than {MAX_SPACE_NODES:,} values (counting what aliases "
                "repeat); a space file needs far fewer",
            )


def _mapping(
    node: yaml.Node, where: str, err: Callable[[int, str], SpaceError]
) -> dict[str, tuple[yaml.Node, int]]:
    if not isinstance(node, yaml.MappingNode):
        raise err(_line(node), f"{where} must be a mapping")
    out: dict[str, tuple[yaml.Node, int]] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key in out:
            raise err(_line(key_node), f"{where} repeats the key {key!r}")
        out[key] = (value_node, _line(key_node))
    return out


_TOP_KEYS = ("format", "name", "description", "generator", "fixed", "variables")
_VAR_KEYS = ("choices", "low", "high", "type", "log", "step")


def parse_space(text: str, source: str = "<space>") -> Space:
    """Parse and validate a space file's text; errors name the file, line, key and allowed values."""

    def err(line: int, message: str) -> SpaceError:
        return SpaceError(f"{source} line {line}: {message}")

    try:
        _check_shape(text, err)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise err(line, f"not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if root is None:
        raise SpaceError(f"{source}: the file is empty")
    top = _mapping(root, "the space", err)
    for key, (_, line) in top.items():
        if key not in _TOP_KEYS:
            raise err(line, f"unknown key {key!r}; allowed: {', '.join(_TOP_KEYS)}")
    if "format" in top:
        fmt = _to_python(top["format"][0], err)
        if fmt != SPACE_FORMAT:
            raise err(top["format"][1], f"format must be {SPACE_FORMAT!r}, got {fmt!r}")
    if "generator" not in top:
        raise err(_line(root), f"generator is missing; allowed: {', '.join(GENERATORS)}")
    generator = _to_python(top["generator"][0], err)
    if generator not in GENERATORS:
        raise err(top["generator"][1], f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
    allowed, _ = GENERATORS[generator]
    lines: dict[str, int] = {}

    fixed: dict[str, Any] = {}
    if "fixed" in top:
        for key, (node, line) in _mapping(top["fixed"][0], "fixed", err).items():
            if key not in allowed:
                raise err(
                    line,
                    f"unknown fixed parameter {key!r} for generator {generator}; "
                    f"allowed: {', '.join(allowed)}",
                )
            value = _to_python(node, err)
            problem = allowed[key].check(value)
            if problem:
                raise err(line, f"fixed {key} = {value!r} is not allowed; allowed values: {problem}")
            fixed[key] = value
            lines[f"fixed.{key}"] = line

    variables: list[Variable] = []
    if "variables" not in top:
        raise err(_line(root), "variables is missing: a space needs at least one searched variable")
    for key, (node, line) in _mapping(top["variables"][0], "variables", err).items():
        if key not in allowed:
            raise err(
                line, f"unknown variable {key!r} for generator {generator}; allowed: {', '.join(allowed)}"
            )
        if key in fixed:
            raise err(line, f"{key!r} is both fixed and a variable")
        spec_nodes = _mapping(node, f"variables.{key}", err)
        for sub, (_, sub_line) in spec_nodes.items():
            if sub not in _VAR_KEYS:
                raise err(
                    sub_line, f"unknown key {sub!r} in variables.{key}; allowed: {', '.join(_VAR_KEYS)}"
                )
        spec = {sub: _to_python(n, err) for sub, (n, _) in spec_nodes.items()}
        variables.append(_variable(key, spec, allowed[key], lambda m, ln=line: err(ln, m)))
        lines[f"variables.{key}"] = line
    if not variables:
        raise err(top["variables"][1], "variables is empty: a space needs at least one searched variable")

    name = _to_python(top["name"][0], err) if "name" in top else Path(source).stem
    description = _to_python(top["description"][0], err) if "description" in top else ""
    return Space(str(name), generator, tuple(variables), fixed, str(description or ""), source, lines)


def _variable(name: str, spec: dict[str, Any], param: Param, err: Callable[[str], SpaceError]) -> Variable:
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise err(f"variables.{name} mixes choices with {extra[0]!r}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise err(f"variables.{name}.choices must be a non-empty list")
        for c in choices:
            problem = param.check(c)
            if problem:
                raise err(f"variables.{name} choice {c!r} is not allowed; allowed values: {problem}")
        return Variable(name, choices=tuple(choices), kind="categorical")
    if param.kind in ("bool", "choice"):
        raise err(f"variables.{name} must list choices (allowed values: {param.check(object())})")
    if "low" not in spec or "high" not in spec:
        raise err(f"variables.{name} needs choices, or low and high")
    low, high = spec["low"], spec["high"]
    for bound in (low, high):
        problem = param.check(bound)
        if problem:
            raise err(f"variables.{name} bound {bound!r} is not allowed; allowed values: {problem}")
    if low >= high:
        raise err(f"variables.{name}: low ({low}) must be below high ({high})")
    kind = spec.get("type", "int" if param.kind == "int" else "float")
    if kind not in ("int", "float") or (param.kind == "int" and kind != "int"):
        raise err(
            f"variables.{name}.type must be {'int' if param.kind == 'int' else 'int or float'}, got {kind!r}"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        raise err(f"variables.{name}.log must be true or false, and needs low > 0")
    step = spec.get("step")
    if step is not None:
        numeric = isinstance(step, (int, float)) and not isinstance(step, bool)
        if kind == "int" and not (numeric and float(step).is_integer() and step >= 1):
            raise err(
                f"variables.{name}.step must be a positive integer (the variable is an int), got {step!r}"
            )
        if not (numeric and math.isfinite(step) and 0 < step <= high - low):
            raise err(f"variables.{name}.step must be a positive number of at most high - low, got {step!r}")
    return Variable(name, low=float(low), high=float(high), kind=kind, log=log, step=step)


def resolve_space_path(space: str | Path) -> Path:
    """A shipped space by name (``rexnet``) or a path to a YAML file."""
    path = Path(space)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = SPACES_DIR / f"{space}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    raise UserError(f"no search space {str(space)!r}: give a YAML file or one of {', '.join(names)}")


def load_space(space: str | Path) -> Space:
    """Load and validate a space by name or path."""
    path = resolve_space_path(space)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read the space file {path}: {exc.strerror or exc}") from None
    return parse_space(text, str(path))
