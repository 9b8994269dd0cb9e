"""Channel schedules from the ReXNet paper's design principles, and the presets.

* :func:`linear_schedule` — the reference ReXNet: every block widens the channels by the
  same step (many expand layers, linear growth), width and depth multipliers.
* :func:`expand_layers_schedule` — the same start and end width, but only ``n_expand``
  blocks widen the channels; the other blocks keep their width.
* :func:`stagewise_schedule` — MobileNetV2-like: constant width inside a stage,
  a jump at each stage's first block.

All return a :class:`~rexsearch.config.ReXNetConfig`. ``ch_div`` > 1 rounds every width
with :func:`make_divisible`; ``ch_div`` = 1 uses Python's ``round`` (half to even) as
the reference implementation does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rexsearch.config import BlockConfig, ReXNetConfig
from rexsearch.errors import UserError

#: The reference ReXNet's stage plan: blocks per stage, stride of each stage's first
#: block, SE per stage.
REXNET_STAGE_LAYERS = (1, 2, 2, 3, 3, 5)
REXNET_STAGE_STRIDES = (1, 2, 2, 2, 1, 2)
REXNET_STAGE_SE = (False, False, True, True, True, True)

#: MobileNetV2 (Sandler et al. 2018): per stage (expansion t, channels c, blocks n, stride s).
MOBILENETV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor``, never more than 10% below it."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _round_channels(value: float, ch_div: int) -> int:
    return max(1, round(value)) if ch_div <= 1 else make_divisible(value, ch_div)


def _expand_per_stage(per_stage: Sequence, layers: Sequence[int]) -> list:
    return [v for v, n in zip(per_stage, layers, strict=True) for _ in range(n)]


def _stage_strides(stage_strides: Sequence[int], layers: Sequence[int]) -> list[int]:
    return [s if i == 0 else 1 for s, n in zip(stage_strides, layers, strict=True) for i in range(n)]


def config_from_widths(
    stem_channels: int,
    widths: Sequence[int],
    strides: Sequence[int],
    expansions: Sequence[int],
    se: Sequence[bool],
    kernels: Sequence[int] | int = 3,
    **common,
) -> ReXNetConfig:
    """Chain blocks ``stem -> widths[0] -> widths[1] ...`` into a config."""
    n = len(widths)
    if isinstance(kernels, int):
        kernels = [kernels] * n
    blocks = []
    previous = stem_channels
    for i in range(n):
        blocks.append(
            BlockConfig(
                in_channels=previous,
                out_channels=int(widths[i]),
                expansion=int(expansions[i]),
                kernel=int(kernels[i]),
                stride=int(strides[i]),
                se=bool(se[i]),
            )
        )
        previous = int(widths[i])
    return ReXNetConfig(blocks=tuple(blocks), stem_channels=stem_channels, **common)


@dataclass(frozen=True)
class StagePlan:
    """Blocks per stage, first-block strides, SE per stage, expansion of later blocks."""

    layers: tuple[int, ...] = REXNET_STAGE_LAYERS
    strides: tuple[int, ...] = REXNET_STAGE_STRIDES
    se: tuple[bool, ...] = REXNET_STAGE_SE
    expansion: int = 6
    first_expansion: int = 1

    def scaled(self, depth_mult: float) -> StagePlan:
        """Stage lengths multiplied by ``depth_mult`` and rounded up (the reference's rule)."""
        layers = tuple(math.ceil(n * depth_mult) for n in self.layers)
        return StagePlan(layers, self.strides, self.se, self.expansion, self.first_expansion)

    @property
    def depth(self) -> int:
        return sum(self.layers)

    def block_strides(self) -> list[int]:
        return _stage_strides(self.strides, self.layers)

    def block_se(self) -> list[bool]:
        return _expand_per_stage(self.se, self.layers)

    def block_expansions(self) -> list[int]:
        first = self.layers[0]
        return [self.first_expansion] * first + [self.expansion] * (self.depth - first)


def _rexnet_widths(
    increments: Sequence[float], start: float, width_mult: float, ch_div: int, keep_small: bool = True
) -> list[int]:
    """Block outputs of a running value that starts at ``start`` and grows by ``increments``.

    ``keep_small`` is the reference's rule below 1.0x: the start width is not scaled down.
    """
    value = start / width_mult if keep_small and width_mult < 1.0 else start
    widths = [_round_channels(value * width_mult, ch_div)]
    for step in increments:
        value += step
        widths.append(_round_channels(value * width_mult, ch_div))
    return widths


def _rexnet_common(
    width_mult: float, stem: int, penultimate: int, ch_div: int, common: dict, keep_small: bool = True
) -> tuple[int, int]:
    stem_base = stem / width_mult if keep_small and width_mult < 1.0 else stem
    stem_channels = _round_channels(stem_base * width_mult, ch_div)
    pen = int(penultimate * width_mult) if ch_div <= 1 else make_divisible(penultimate * width_mult, ch_div)
    common.setdefault("se_ratio", 12)
    common.setdefault("activation", "silu")
    common.setdefault("dw_activation", "relu6")
    common.setdefault("shortcut", "partial")
    return stem_channels, pen


def linear_schedule(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    start: float = 16,
    final_increment: float = 180,
    stem: int = 32,
    penultimate: int = 1280,
    plan: StagePlan = StagePlan(),
    ch_div: int = 1,
    kernel: int = 3,
    keep_small: bool = True,
    **common,
) -> ReXNetConfig:
    """The reference ReXNet schedule: channels grow by ``final_increment / depth`` per block.

    With the defaults and ``width_mult`` in {0.9, 1.0, 1.3, 1.5, 2.0, 3.0} this is the
    reference implementation exactly (stem ``round(32·w)`` kept at 32 below 1.0x,
    penultimate ``int(1280·w)``). ``keep_small=False`` drops the reference's rule that the
    stem and start widths are not scaled below 1.0x (so that small budgets stay reachable).
    """
    if width_mult <= 0 or depth_mult <= 0:
        raise UserError(f"width and depth multipliers must be positive, got {width_mult}, {depth_mult}")
    plan = plan.scaled(depth_mult)
    n = plan.depth
    increments = [final_increment / n] * (n - 1)
    return _rexnet_config(
        plan, increments, width_mult, start, stem, penultimate, ch_div, kernel, keep_small, common
    )


def _rexnet_config(
    plan: StagePlan,
    increments: Sequence[float],
    width_mult: float,
    start: float,
    stem: int,
    penultimate: int,
    ch_div: int,
    kernel: int,
    keep_small: bool,
    common: dict,
) -> ReXNetConfig:
    """The ReXNet-style config whose block widths follow ``start`` + cumulative ``increments``."""
    stem_channels, pen = _rexnet_common(width_mult, stem, penultimate, ch_div, common, keep_small)
    widths = _rexnet_widths(increments, start, width_mult, ch_div, keep_small)
    return config_from_widths(
        stem_channels,
        widths,
        plan.block_strides(),
        plan.block_expansions(),
        plan.block_se(),
        kernel,
        penultimate_channels=pen,
        **common,
    )


def expand_positions(depth: int, n_expand: int) -> list[int]:
    """Indices of the ``n_expand`` blocks (among blocks 1..depth-1) that widen, evenly spread."""
    if not 0 <= n_expand <= depth - 1:
        raise UserError(f"the number of expand layers must be in [0, {depth - 1}], got {n_expand}")
    later = depth - 1
    return [i for i in range(1, depth) if (i * n_expand) // later > ((i - 1) * n_expand) // later]


def expand_layers_schedule(
    n_expand: int,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    start: float = 16,
    final_increment: float = 180,
    stem: int = 32,
    penultimate: int = 1280,
    plan: StagePlan = StagePlan(),
    ch_div: int = 1,
    kernel: int = 3,
    keep_small: bool = True,
    **common,
) -> ReXNetConfig:
    """Like :func:`linear_schedule` (same first and last width) with only ``n_expand`` blocks
    widening the channels, in equal steps; the other blocks keep their width.
    ``n_expand = depth - 1`` is the linear schedule itself."""
    plan = plan.scaled(depth_mult)
    n = plan.depth
    positions = set(expand_positions(n, n_expand))
    total = final_increment * (n - 1) / n
    step = total / n_expand if n_expand else 0.0
    increments = [step if i in positions else 0.0 for i in range(1, n)]
    return _rexnet_config(
        plan, increments, width_mult, start, stem, penultimate, ch_div, kernel, keep_small, common
    )


def stagewise_schedule(
    stages: Sequence[tuple[int, int, int, int]] = MOBILENETV2_STAGES,
    width_mult: float = 1.0,
    stem: int = 32,
    penultimate: int = 1280,
    ch_div: int = 8,
    se: Sequence[bool] | None = None,
    kernel: int = 3,
    **common,
) -> ReXNetConfig:
    """MobileNetV2-like stage-wise channels: ``stages`` lists (expansion, channels, blocks,
    stride) per stage; widths are ``make_divisible(c·w, ch_div)`` as torchvision does, and
    the penultimate width never shrinks below ``penultimate``."""
    layers = [n for _, _, n, _ in stages]
    widths = _expand_per_stage([_round_channels(c * width_mult, ch_div) for _, c, _, _ in stages], layers)
    expansions = _expand_per_stage([t for t, _, _, _ in stages], layers)
    strides = _stage_strides([s for _, _, _, s in stages], layers)
    se_flags = _expand_per_stage(se if se is not None else [False] * len(stages), layers)
    common.setdefault("activation", "relu6")
    common.setdefault("dw_activation", "relu6")
    common.setdefault("shortcut", "identity")
    return config_from_widths(
        _round_channels(stem * width_mult, ch_div),
        widths,
        strides,
        expansions,
        se_flags,
        kernel,
        penultimate_channels=_round_channels(penultimate * max(1.0, width_mult), ch_div),
        **common,
    )


# ---------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    factory: Callable[[], ReXNetConfig]

    def config(self, num_classes: int | None = None) -> ReXNetConfig:
        cfg = self.factory()
        cfg = ReXNetConfig.from_dict({**cfg.to_dict(), "name": self.name})
        return cfg if num_classes is None else cfg.with_num_classes(num_classes)


def _rexnet(w: float) -> Callable[[], ReXNetConfig]:
    return lambda: linear_schedule(width_mult=w)


PRESETS: dict[str, Preset] = {
    f"rexnet-{w}": Preset(f"rexnet-{w}", f"ReXNet {w}x (reference implementation, ImageNet head)", _rexnet(w))
    for w in (0.9, 1.0, 1.3, 1.5, 2.0, 3.0)
}
PRESETS["mobilenetv2-1.0"] = Preset(
    "mobilenetv2-1.0",
    "MobileNetV2 1.0x (the paper's baseline: ReLU6, no SE, identity shortcut)",
    lambda: stagewise_schedule(dropout=0.2),
)


def get_preset(name: str, num_classes: int | None = None) -> ReXNetConfig:
    """A preset's config by its name; unknown names raise a UserError listing the presets."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None
    return preset.config(num_classes)
