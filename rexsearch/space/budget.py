"""The budget a candidate must fit (MACs, parameters, a predicted latency) and the candidate itself.

A latency budget reaches its predictor through :class:`LatencyPredictor`, a protocol: this
package never imports :mod:`rexsearch.latency`, whose :class:`~rexsearch.latency.LatencyTable`
is one such predictor (docs/architecture.md, "The budget core").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rexsearch.config import ReXNetConfig
from rexsearch.cost import Cost
from rexsearch.errors import UserError

#: The lower edge of a budget's window, as a share of the binding budget.
LOWER_FRACTION = 0.97


class InfeasibleError(UserError):
    """No width puts this candidate inside the budget window."""


class LatencyPredictor(Protocol):
    """What a latency budget asks of its predictor.

    ``predict`` must not decrease when a channel count grows (the width search relies on
    it), except on the channels of ``blocked_alignment``: a runtime that runs faster kernels
    on input channels that are a multiple of it (None where there is none) may predict such
    a width faster than one just below it, and the fill pass (:func:`~rexsearch.space.fill_window`)
    then tries raises onto that multiple.
    """

    @property
    def blocked_alignment(self) -> int | None: ...

    def predict(self, config: ReXNetConfig, resolution: int | None = None) -> float:
        """The predicted end-to-end latency (ms) of ``config`` at ``resolution``."""
        ...


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
    latency_table: LatencyPredictor | None = field(default=None, compare=False, repr=False)
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

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], latency_table: LatencyPredictor | None = None
    ) -> Budget:
        """The budget named by a run's settings (``flops_budget``, ``params_budget``,
        ``resolution``, ``latency_budget_ms``, ``latency_margin``, ``channel_multiple``: the
        names of :class:`rexsearch.search.SearchSettings` and of run.json's ``settings``), with
        the latency table that predicts it. The one place a run's Budget is built."""
        return cls(
            settings.get("flops_budget"),
            settings.get("params_budget"),
            int(settings.get("resolution") or 224),
            settings.get("latency_budget_ms"),
            latency_table,
            float(settings.get("latency_margin") or 0.0),
            settings.get("channel_multiple"),
        )

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
