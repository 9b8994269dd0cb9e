"""Width solving: the largest width multiplier whose network fits a budget's window.

The width multiplier is never sampled: after the shape variables are drawn,
:func:`fit_budget` solves it (bisection on the analytic cost; under a latency budget an
interpolation search on the predicted latency, :func:`interpolation_search`), and
:func:`fill_window` raises single widths where one rounding step of the multiplier jumps
over the window (docs/architecture.md, "The budget core").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from rexsearch.config import ReXNetConfig
from rexsearch.cost import Cost, count_cost
from rexsearch.errors import ConfigError
from rexsearch.space.budget import LOWER_FRACTION, Budget, InfeasibleError

#: The width multipliers searched: the narrowest and the widest.
WIDTH_RANGE = (0.02, 16.0)

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
    align = math.lcm((table.blocked_alignment if table is not None else None) or 1, step)
    align = align if align > step else 0
    filled, counted, tight = raise_widths(config, cost, budget, step, align, aligned_first=False)
    if not tight and align:
        again, again_counted, again_tight = raise_widths(
            config, cost, budget, step, align, aligned_first=True
        )
        if again_tight:
            filled, counted = again, again_counted
    return filled, counted or count_cost(filled, budget.resolution)


def raise_widths(
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
    (:func:`interpolation_search`) takes the bisection's place: it stops as soon as a width
    is predicted within :data:`CLOSE_ENOUGH` under the limit, so it usually tries fewer
    widths than bisection's ``iterations`` and never more than one beyond them.

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
            (best_cfg, best), llo, lhi = interpolation_search(
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


def interpolation_search(
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
