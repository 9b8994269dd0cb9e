"""The tiny space and the coarse tables the latency tests share (the fixtures ``space`` and
``table`` in tests/conftest.py are built from them)."""

from __future__ import annotations

import random

from rexsearch.latency import build_table
from rexsearch.space import RandomTrial

RES = 32
TINY_SPACE = """
format: rexsearch.space/1
name: tiny
generator: linear
fixed:
  depth_mult: 0.25
  activation: silu
  dw_activation: relu6
  expansion: 3
  se_ratio: 4
  penultimate: 64
  num_classes: 10
  stem: 8
variables:
  start: {low: 8, high: 16}
  growth: {low: 20, high: 60}
  expand_fraction: {low: 0.5, high: 1.0}
"""


def draw_shapes(space, n=4, seed=0):
    """``n`` draws of ``space``, each built at widths 0.25, 1 and 3."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        values = space.suggest(RandomTrial(rng))
        out += [space.build(values, w) for w in (0.25, 1.0, 3.0)]
    return out


def tiny_table(shapes, **options):
    """A coarse table of ``shapes`` at RES (the first two its calibration networks)."""
    settings = {"threads": 1, "resolution": RES, "calibration": shapes[:2], "warmup": 1, "repeats": 1}
    return build_table(shapes=shapes, **{**settings, **options})
