"""Search spaces: YAML file -> Optuna distributions -> ReXNetConfig inside the budget.

Modules (docs/architecture.md, "The budget core"):

* :mod:`~rexsearch.space.budget` — :class:`Budget`, :class:`Candidate`, and the
  :class:`LatencyPredictor` protocol a latency budget talks to;
* :mod:`~rexsearch.space.generators` — the ``linear``, ``stagewise`` and ``piecewise``
  generators and their arguments;
* :mod:`~rexsearch.space.solve` — the width that fits a budget (:func:`fit_budget`,
  :func:`fill_window`);
* :mod:`~rexsearch.space.spaces` — :class:`Space`, what it can reach, feasibility, baselines;
* :mod:`~rexsearch.space.format` — the space file format and the shipped spaces
  (package data in ``rexsearch/space/shipped/``);
* :mod:`~rexsearch.space.calibration` — the networks a latency table is built around.

This package never imports :mod:`rexsearch.latency`; a latency table reaches the budget
through the protocol.
"""

from __future__ import annotations

from rexsearch.space.budget import LOWER_FRACTION, Budget, Candidate, InfeasibleError, LatencyPredictor
from rexsearch.space.calibration import (
    CALIBRATION_MACS,
    CALIBRATION_NETWORKS,
    CALIBRATION_SPACES,
    CALIBRATION_WIDTHS,
    calibration_networks,
    calibration_shapes,
)
from rexsearch.space.format import (
    MAX_SPACE_CHARS,
    MAX_SPACE_DEPTH,
    MAX_SPACE_NODES,
    SPACES_DIR,
    SpaceError,
    load_space,
    parse_space,
    resolve_space_path,
    shipped_space_names,
)
from rexsearch.space.generators import (
    GENERATORS,
    LINEAR_PARAMS,
    PIECEWISE_PARAMS,
    STAGEWISE_PARAMS,
    Param,
    fixed_depth_layers,
)
from rexsearch.space.solve import (
    CLOSE_ENOUGH,
    FILL_SWEEPS,
    LATENCY_WIDTH_ITERATIONS,
    WIDTH_ITERATIONS,
    WIDTH_RANGE,
    fill_window,
    fit_budget,
    interpolation_search,
    raise_widths,
)
from rexsearch.space.spaces import (
    BASELINES,
    SPACE_FORMAT,
    RandomTrial,
    Space,
    Variable,
    baseline_candidate,
    baseline_configs,
    check_feasible,
    largest_reachable,
    smallest_reachable,
    smallest_reachable_latency,
)

__all__ = [
    "BASELINES",
    "CALIBRATION_MACS",
    "CALIBRATION_NETWORKS",
    "CALIBRATION_SPACES",
    "CALIBRATION_WIDTHS",
    "CLOSE_ENOUGH",
    "FILL_SWEEPS",
    "GENERATORS",
    "LATENCY_WIDTH_ITERATIONS",
    "LINEAR_PARAMS",
    "LOWER_FRACTION",
    "MAX_SPACE_CHARS",
    "MAX_SPACE_DEPTH",
    "MAX_SPACE_NODES",
    "PIECEWISE_PARAMS",
    "SPACES_DIR",
    "SPACE_FORMAT",
    "STAGEWISE_PARAMS",
    "WIDTH_ITERATIONS",
    "WIDTH_RANGE",
    "Budget",
    "Candidate",
    "InfeasibleError",
    "LatencyPredictor",
    "Param",
    "RandomTrial",
    "Space",
    "SpaceError",
    "Variable",
    "baseline_candidate",
    "baseline_configs",
    "calibration_networks",
    "calibration_shapes",
    "check_feasible",
    "fill_window",
    "fit_budget",
    "fixed_depth_layers",
    "interpolation_search",
    "largest_reachable",
    "load_space",
    "parse_space",
    "raise_widths",
    "resolve_space_path",
    "shipped_space_names",
    "smallest_reachable",
    "smallest_reachable_latency",
]
