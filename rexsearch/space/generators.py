"""Generators: how a space's variables become a channel schedule at a width multiplier.

* ``linear`` — the paper's principles (:func:`~rexsearch.principles.expand_layers_schedule`):
  the fraction of blocks that expand, start width and total growth of a linear schedule,
  nonlinearities, expansion ratio, SE per stage and its ratio, penultimate width, depth.
  The width multiplier scales every width, stem and start included (the reference keeps
  those two at their 1.0x value below 1.0x, which would put small budgets out of reach).
* ``stagewise`` — MobileNetV2-like: constant width inside each of 7 stages, per-stage
  width ratios and depths.
* ``piecewise`` — the CVPR version's ``c_i = a * f(i) + b`` with ``f`` piecewise linear
  (non-decreasing, three segments whose slopes are sampled), on ReXNet's stage plan.

Each generator declares its arguments (:class:`Param`: kind, default, allowed values),
which a space file fixes or searches (docs/architecture.md, "Search spaces").
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rexsearch.config import ACTIVATIONS, SHORTCUTS, ReXNetConfig
from rexsearch.principles import (
    MOBILENETV2_STAGES,
    REXNET_STAGE_LAYERS,
    StagePlan,
    config_from_widths,
    expand_layers_schedule,
    make_divisible,
    stagewise_schedule,
)


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
