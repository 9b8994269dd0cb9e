"""The end-to-end correction: what the sum of a table's operators misses, fitted on whole networks.

A network runs slower (or faster) than the sum of its operators timed alone: framework
overhead between operators, weights evicted from the cache, a graph runtime's layout
conversions. The correction is fitted on calibration networks timed end to end:
``median = a + b · summed + c · weights + d · operators (+ e · converted)`` (``line``, the
default, :func:`fit_terms`), or ``a + Σ b_k · summed_k + ...`` over the operator kinds
(``kinds``, :func:`fit_kind_correction`); every coefficient is non-negative and the slope
positive, so the prediction never decreases when an operator grows (docs/architecture.md,
"Latency tables").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rexsearch.latency.ops import CONVERSIONS_INDEX, COUNT_INDEX, KINDS, WEIGHTS_INDEX

#: ``line``: one line through (summed, measured) with the weights, operator and conversion
#: terms (the default: it ranks networks as well as the per-kind fit, and its single slope
#: cannot make the prediction jump where a shortcut appears, which would make a width search
#: miss its 3% window more often); ``kinds``: :func:`fit_kind_correction`.
CORRECTIONS = ("line", "kinds")
#: The fewest calibration networks a per-kind fit is made on (:func:`fit_kind_correction`);
#: with fewer, the line is fitted.
MIN_KIND_CALIBRATION = 16
#: The fewest calibration networks the extra terms are fitted on (:func:`fit_terms`).
MIN_WEIGHTS_CALIBRATION = 8


@dataclass(frozen=True)
class Correction:
    """What the sum of the table's operators misses, fitted on end-to-end calibration networks.

    ``measured = intercept_ms + slope · summed + per_op_ms · operators + per_mweight_ms ·
    weights + per_mconversion_ms · conversions`` (weights and converted elements in
    millions), or with ``kind_slopes`` the sum per kind weighted by them instead of ``slope ·
    summed``. The weights term is the time to stream a network's weights from memory: an
    operator timed alone, over and over, finds its weights in the cache; in a network they
    have been evicted by the rest of it. The operator term is what a network pays per
    operator beyond the operators' own timed costs. The conversion term is ONNX Runtime's
    layout conversions between operators (:func:`segment_conversions`; tables with a
    blocked alignment). A table of an older rexsearch lacks the later terms (0).
    """

    intercept_ms: float
    slope: float
    calibration: tuple[dict[str, Any], ...] = ()
    kind_slopes: tuple[float, ...] = ()
    per_op_ms: float = 0.0
    per_mweight_ms: float = 0.0
    per_mconversion_ms: float = 0.0

    def apply(self, components: float | Sequence[float]) -> float:
        """The corrected time of a network from its :meth:`LatencyTable.components` (or a plain sum)."""
        if isinstance(components, (int, float)):
            return self.intercept_ms + self.slope * components
        kinds, count = components[: len(KINDS)], components[COUNT_INDEX]
        weights = components[WEIGHTS_INDEX] if len(components) > WEIGHTS_INDEX else 0.0
        moved = components[CONVERSIONS_INDEX] if len(components) > CONVERSIONS_INDEX else 0.0
        if self.kind_slopes:
            body = sum(w * k for w, k in zip(self.kind_slopes, kinds, strict=True))
        else:
            body = self.slope * sum(kinds)
        return (
            self.intercept_ms
            + body
            + self.per_op_ms * count
            + self.per_mweight_ms * weights
            + self.per_mconversion_ms * moved
        )

    def describe(self) -> str:
        weights = f" + {self.per_mweight_ms:.3f} ms x M weights" if self.per_mweight_ms else ""
        if self.per_mconversion_ms:
            weights += f" + {self.per_mconversion_ms:.3f} ms x M converted"
        if not self.kind_slopes:
            ops = f" + {self.per_op_ms * 1e3:.1f} us x operators" if self.per_op_ms else ""
            return f"measured = {self.intercept_ms:.3f} ms + {self.slope:.3f} x summed{ops}{weights}"
        kinds = " + ".join(f"{w:.3f} x {k}" for w, k in zip(self.kind_slopes, KINDS, strict=True))
        return (
            f"measured = {self.intercept_ms:.3f} ms + {kinds} + {self.per_op_ms * 1e3:.1f} us x operators"
            f"{weights}"
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "intercept_ms": self.intercept_ms,
            "slope": self.slope,
            "per_mweight_ms": self.per_mweight_ms,
            "per_op_ms": self.per_op_ms,
            "per_mconversion_ms": self.per_mconversion_ms,
            "calibration": list(self.calibration),
        }
        if self.kind_slopes:
            out.update(kinds=list(KINDS), kind_slopes=list(self.kind_slopes))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Correction:
        slopes = tuple(float(v) for v in data.get("kind_slopes", ()))
        if slopes and list(data.get("kinds", ())) != list(KINDS):
            raise ValueError(f"correction kinds {data.get('kinds')} are not {list(KINDS)}")
        return cls(
            float(data["intercept_ms"]),
            float(data["slope"]),
            tuple(data.get("calibration", ())),
            slopes,
            float(data.get("per_op_ms", 0.0)),
            float(data.get("per_mweight_ms", 0.0)),
            float(data.get("per_mconversion_ms", 0.0)),
        )


def fit_correction(summed: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through (summed, measured) with a non-negative intercept and a positive slope.

    When the free line would cross below zero (an intercept under 0) or fall (a slope not
    above 0), the line through the origin is fitted instead, so predictions stay positive
    and grow with the summed time.
    """
    n = len(summed)
    if n >= 2:
        mx, my = sum(summed) / n, sum(measured) / n
        sxx = sum((x - mx) ** 2 for x in summed)
        if sxx > 0:
            slope = sum((x - mx) * (y - my) for x, y in zip(summed, measured, strict=True)) / sxx
            if slope > 0 and my - slope * mx >= 0:
                return my - slope * mx, slope
    sxx = sum(x * x for x in summed)
    ratio = sum(x * y for x, y in zip(summed, measured, strict=True)) / sxx if sxx > 0 else 1.0
    return 0.0, ratio if ratio > 0 else 1.0


def fit_kind_correction(
    components: Sequence[Sequence[float]],
    measured: Sequence[float],
    calibration: Sequence[dict[str, Any]] = (),
) -> Correction:
    """Non-negative least squares of ``measured`` on [1, summed time per kind, operator count,
    millions of weights, millions of converted elements] (rows of an older table lack the
    last columns).

    Rows are weighted by ``1 / measured``, so the fit minimises relative error, which is
    what the predictor is judged by. Coefficients are non-negative, so the prediction
    never decreases when an operator grows. The plain ``slope`` kept beside them is the
    line of :func:`fit_correction`, for readers of the file that know only it.
    """
    import numpy as np
    from scipy.optimize import nnls

    a = np.array([[1.0, *c] for c in components], dtype=float)
    y = np.array(measured, dtype=float)
    w = 1.0 / y
    coef, _ = nnls(a * w[:, None], y * w)
    intercept, *slopes = (float(v) for v in coef)
    per_op, per_mweight = slopes[COUNT_INDEX], slopes[WEIGHTS_INDEX] if len(slopes) > WEIGHTS_INDEX else 0.0
    per_mconversion = slopes[CONVERSIONS_INDEX] if len(slopes) > CONVERSIONS_INDEX else 0.0
    _, line_slope = fit_correction([sum(c[: len(KINDS)]) for c in components], list(measured))
    return Correction(
        intercept,
        line_slope,
        tuple(calibration),
        tuple(slopes[: len(KINDS)]),
        per_op,
        per_mweight,
        per_mconversion,
    )


def fit_terms(
    summed: Sequence[float], terms: Sequence[Sequence[float]], measured: Sequence[float]
) -> tuple[float, float, tuple[float, ...]]:
    """``(intercept, slope, coefficients)`` of ``measured = a + b · summed + Σ c_j · terms[j]``
    (``terms``: columns of the rows, e.g. millions of weights and operator counts), all
    non-negative and the slope positive, by least squares weighted by ``1 / measured``
    (relative error, which the predictor is judged by).

    The operator term is what a network pays per operator beyond the operator's own timed
    cost (on eager torch, the dispatch between modules). With fewer than
    ``MIN_WEIGHTS_CALIBRATION`` rows (several coefficients from a handful of noisy rows fit the
    noise), or when no such fit has a positive slope, the line of :func:`fit_correction` alone
    (every term's coefficient 0).
    """
    import numpy as np
    from scipy.optimize import nnls

    y = np.array(measured, dtype=float)
    if len(y) >= MIN_WEIGHTS_CALIBRATION:
        a = np.column_stack([np.ones_like(y), np.array(summed, dtype=float), *map(np.array, terms)])
        coef, _ = nnls(a / y[:, None], np.ones_like(y))
        if coef[1] > 0:
            return float(coef[0]), float(coef[1]), tuple(float(v) for v in coef[2:])
    return (*fit_correction(summed, measured), (0.0,) * len(terms))


def fit_table_correction(calibration: Sequence[dict[str, Any]], kind: str = "line") -> Correction:
    """The correction of ``kind`` (:data:`CORRECTIONS`) on a table's calibration rows
    (``summed_ms``, ``components``, ``median_ms``); ``kinds`` needs ``MIN_KIND_CALIBRATION``
    rows and falls back to the line with fewer. The line has the weights term when every row
    records the network's weights (``components`` of an older table do not).

    The target is each network's median time, the statistic a trial measures and a latency
    budget is judged by (it runs above the fastest run); a row of an older table without it
    is fitted to its fastest run (``measured_ms``).
    """
    measured = [r.get("median_ms", r["measured_ms"]) for r in calibration]
    if kind == "kinds" and len(calibration) >= MIN_KIND_CALIBRATION:
        return fit_kind_correction([r["components"] for r in calibration], measured, calibration)
    summed = [r["summed_ms"] for r in calibration]
    if calibration and all(len(r.get("components", ())) > WEIGHTS_INDEX for r in calibration):
        columns = [[r["components"][i] for r in calibration] for i in (WEIGHTS_INDEX, COUNT_INDEX)]
        if all(len(r["components"]) > CONVERSIONS_INDEX for r in calibration):
            columns.append([r["components"][CONVERSIONS_INDEX] for r in calibration])
        intercept, slope, (per_mweight, per_op, *per_mconversion) = fit_terms(summed, columns, measured)
        return Correction(
            intercept,
            slope,
            tuple(calibration),
            per_op_ms=per_op,
            per_mweight_ms=per_mweight,
            per_mconversion_ms=per_mconversion[0] if per_mconversion else 0.0,
        )
    intercept, slope = fit_correction(summed, measured)
    return Correction(intercept, slope, tuple(calibration))
