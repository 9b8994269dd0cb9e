"""The networks a latency table is built around: shapes that set its grids, networks that fit its correction.

Both are drawn from a fixed, named tuple of shipped spaces (:data:`CALIBRATION_SPACES`), so a
table depends only on rexsearch's version and the seeds, not on what else lies beside the
shipped files (docs/architecture.md, "Latency tables").
"""

from __future__ import annotations

import math
import random

from rexsearch.config import ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.principles import PRESETS
from rexsearch.space.budget import Budget
from rexsearch.space.format import load_space
from rexsearch.space.spaces import RandomTrial

#: The shipped spaces calibration draws from, in this order.
CALIBRATION_SPACES = (
    "mobilenetv2",
    "paper-13ib-stagewise",
    "paper-13ib",
    "paper-5ib-stagewise",
    "paper-5ib",
    "paper-9ib-stagewise",
    "paper-9ib",
    "piecewise",
    "rexnet",
)
#: Widths at which the calibration shapes are built: they set the range of each grid.
CALIBRATION_WIDTHS = (0.25, 0.5, 1.0, 2.0, 3.0)
#: Networks timed end to end to fit a table's correction.
CALIBRATION_NETWORKS = 36
#: The MACs range (at 224x224, scaled by the resolution's area) of the calibration networks,
#: which are decoded from the shipped spaces as a search draws its candidates.
CALIBRATION_MACS = (100e6, 1.2e9)


def calibration_shapes(per_space: int = 6, seed: int = 1000) -> list[ReXNetConfig]:
    """Presets and random shapes of every calibration space at several widths: they set the grids' ranges."""
    rng = random.Random(seed)
    out = [p.config() for p in PRESETS.values()]
    for name in CALIBRATION_SPACES:
        space = load_space(name)
        for _ in range(per_space):
            values = space.suggest(RandomTrial(rng))
            for w in CALIBRATION_WIDTHS:
                try:
                    out.append(space.build(values, w))
                except UserError:
                    continue
    return out


def calibration_networks(
    count: int = CALIBRATION_NETWORKS,
    resolution: int = 224,
    seed: int = 2000,
    channel_multiple: int | None = None,
) -> list[ReXNetConfig]:
    """``count`` candidates decoded from the calibration spaces in turn, each at a MACs budget
    drawn log-uniformly from ``CALIBRATION_MACS`` (scaled by the resolution's area): networks
    like the ones a search predicts, to fit the end-to-end correction on.

    Shapes at fixed width multipliers (:func:`calibration_shapes`) span the grids but are not
    what a width solver produces (a multiplier of 3 or 0.25 of a random shape), so a
    correction is fitted on decoded candidates instead. ``channel_multiple`` decodes them
    with widths on that multiple, as a ``--channel-multiple`` search does.
    """
    rng = random.Random(seed)
    spaces = [load_space(name) for name in CALIBRATION_SPACES]
    lo, hi = (m * (resolution / 224) ** 2 for m in CALIBRATION_MACS)
    out: list[ReXNetConfig] = []
    attempts = 0
    while len(out) < count and attempts < 50 * count:
        space = spaces[attempts % len(spaces)]
        attempts += 1
        budget = Budget(
            round(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
            resolution=resolution,
            channel_multiple=channel_multiple,
        )
        try:
            out.append(space.decode(space.suggest(RandomTrial(rng)), budget).config)
        except UserError:
            continue
    return out
