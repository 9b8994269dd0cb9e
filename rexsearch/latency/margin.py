"""The latency budget's margin: how far under the budget a candidate's prediction must stay.

A candidate solved to ``budget * (1 - margin)`` and measured at ``ratio`` times its
prediction stays within the budget when ``ratio <= 1 / (1 - margin)``. ``--latency-margin
auto`` reads the margin off the table's calibration networks, each predicted without itself
(:func:`held_out_ratios`, :func:`auto_margin`); ``--latency-margin measure`` times the
search's own candidates here before it starts (:func:`measured_margin`). Both take the
conformal rank of the ratios (:func:`conformal_margin`; docs/architecture.md, "Latency
budgets").
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rexsearch.errors import BudgetError, LatencyTableError, UserError
from rexsearch.latency.correction import fit_table_correction
from rexsearch.latency.device import measure_latency
from rexsearch.latency.table import LatencyTable, check_table_here
from rexsearch.space import Budget, Space

#: The share of a table's calibration networks ``--latency-margin auto`` keeps within a budget.
AUTO_MARGIN_SHARE = 0.95
#: Calibration networks ``--latency-margin auto`` needs at least: the rank it reads,
#: ceil((n + 1) * AUTO_MARGIN_SHARE), is within n only from 19 on.
MIN_AUTO_MARGIN_CALIBRATION = 19


# ---------------------------------------------------------------------------- budget strings
_LATENCY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ms|s|us|µs)?\s*$", re.IGNORECASE)
_LATENCY_SCALE = {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}


def parse_latency_budget(text: str | float, flag: str = "--latency-budget") -> float:
    """``12ms``, ``0.012s``, ``500us`` or a bare ``12`` (milliseconds) -> milliseconds."""
    m = _LATENCY_RE.match(str(text))
    if not m or isinstance(text, bool):
        raise BudgetError(
            f"{flag} must be a duration such as 12ms, 0.012s or 12 (milliseconds), got {text!r}"
        )
    value = float(m.group(1)) * _LATENCY_SCALE[(m.group(2) or "").lower()]
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"{flag} must be positive, got {text!r}")
    return value


def held_out_ratios(table: LatencyTable) -> list[float]:
    """Measured / predicted for each calibration network, each predicted by the table's kind
    of correction refitted without it (leave-one-out: an in-sample residual flatters the fit)."""
    rows = list(table.correction.calibration)
    kind = "kinds" if table.correction.kind_slopes else "line"
    ratios = []
    for i, row in enumerate(rows):
        correction = fit_table_correction(rows[:i] + rows[i + 1 :], kind)
        predicted = correction.apply(row.get("components", row["summed_ms"]))
        ratios.append(row.get("median_ms", row["measured_ms"]) / predicted)
    return ratios


def auto_margin(table: LatencyTable, share: float = AUTO_MARGIN_SHARE) -> float:
    """The latency margin under which ``share`` of the table's calibration networks, each
    predicted without itself (:func:`held_out_ratios`), measured within the budget.

    A candidate solved to ``budget * (1 - margin)`` and measured at ``ratio`` times its
    prediction stays within ``budget`` when ``ratio <= 1 / (1 - margin)``. The margin is set by
    the ``ceil((n + 1) * share)``-th smallest of the n ratios, the rank at which conformal
    prediction bounds the ratio of one more network drawn like them (0 when that ratio is
    under 1). It holds for new networks only as far as they are drawn like the calibration
    networks and the machine runs as fast as at the build (``latency-table check``).
    """
    rows = table.correction.calibration
    if len(rows) < MIN_AUTO_MARGIN_CALIBRATION:
        raise LatencyTableError(
            f"--latency-margin auto needs a table with {MIN_AUTO_MARGIN_CALIBRATION} or more calibration "
            f"networks, this one has {len(rows)} (built with --quick?): give a margin such as 0.1, or build "
            "the table without --quick"
        )
    return conformal_margin(held_out_ratios(table), share)


def conformal_margin(ratios: Sequence[float], share: float = AUTO_MARGIN_SHARE) -> float:
    """The margin that keeps a network measured at up to the ``ceil((n + 1) * share)``-th
    smallest of the n ``ratios`` (measured / predicted) within a budget: ``1 - 1 / ratio``,
    0 when that ratio is under 1 (:func:`auto_margin`, :func:`measured_margin`)."""
    ordered = sorted(ratios)
    rank = math.ceil((len(ordered) + 1) * share)
    if rank > len(ordered):
        raise ValueError(f"a {share:.0%} conformal margin needs {rank} or more ratios, got {len(ordered)}")
    return max(0.0, 1.0 - 1.0 / ordered[rank - 1])


#: Candidates ``--latency-margin measure`` times before a search (the fewest whose conformal
#: rank at 95% is within them is 19).
MEASURED_MARGIN_CANDIDATES = 20


@dataclass(frozen=True)
class MeasuredMargin:
    """A latency margin read off the search's own candidates, timed here before it starts."""

    margin: float
    ratios: tuple[float, ...]  # measured median / predicted, one per candidate
    space: str
    budget_ms: float
    seconds: float
    share: float = AUTO_MARGIN_SHARE

    def describe(self) -> str:
        over = sum(r > 1.0 for r in self.ratios)
        return (
            f"latency margin {self.margin:.1%}: {len(self.ratios)} candidates of {self.space} decoded "
            f"under {self.budget_ms:g} ms and timed here ran at {min(self.ratios):.2f}-"
            f"{max(self.ratios):.2f}x their predictions (median {statistics.median(self.ratios):.2f}x, "
            f"{over} over); the margin keeps {self.share:.0%} of such candidates within the budget "
            f"({self.seconds:.0f} s)"
        )


def measured_margin(
    space: Space,
    budget: Budget,
    candidates: int = MEASURED_MARGIN_CANDIDATES,
    seed: int = 0,
    share: float = AUTO_MARGIN_SHARE,
    warmup: int = 5,
    repeats: int = 15,
) -> MeasuredMargin:
    """``--latency-margin measure``: decode ``candidates`` seeded draws of ``space`` under
    ``budget`` with no margin, time each here (the median of ``repeats`` runs, as a trial
    does), and take the conformal margin (:func:`conformal_margin`) of measured / predicted.

    :func:`auto_margin` reads the table's calibration networks, drawn over a wide MACs range
    of every shipped space. These are drawn as the search draws, at the edge of its budget,
    on the machine as it runs now, so the margin holds for the search's candidates as far as
    the machine keeps that speed. Refuses a table built elsewhere (this machine must be the
    table's device, where trials measure their latency).
    """
    table = budget.latency_table
    if not isinstance(table, LatencyTable) or budget.latency_ms is None:
        raise UserError("--latency-margin measure needs --latency-budget and --latency-table")
    if candidates < MIN_AUTO_MARGIN_CALIBRATION:
        raise UserError(
            f"a measured margin needs {MIN_AUTO_MARGIN_CALIBRATION} or more candidates, got {candidates}"
        )
    here = check_table_here(table)
    start = time.perf_counter()
    drawn = space.sample(dataclasses.replace(budget, latency_margin=0.0), candidates, seed=seed)
    if len(drawn) < candidates:
        raise UserError(
            f"--latency-margin measure: only {len(drawn)} of the {candidates} candidates it times fit the "
            f"budget of {budget.latency_ms:g} ms in the space {space.name!r}; raise the budget or give a "
            "margin such as 0.1"
        )
    ratios = []
    for cand in drawn:
        lat = measure_latency(cand.config, table.resolution, env=here, warmup=warmup, repeats=repeats)
        ratios.append(lat.median_ms / cand.latency_ms)
    return MeasuredMargin(
        conformal_margin(ratios, share),
        tuple(ratios),
        space.name,
        budget.latency_ms,
        time.perf_counter() - start,
        share,
    )
