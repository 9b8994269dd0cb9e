"""The latency table: measured operator families, the correction, and the prediction they make.

A :class:`LatencyTable` holds, for each operator family (:class:`Family`: one operator of one
kernel, stride and spatial size), the times measured on a grid of channel counts, and the
end-to-end :class:`~rexsearch.latency.correction.Correction`. :meth:`LatencyTable.predict`
sums the table's operators of each kind for a config and applies the correction; each
segment (stem, block, head) is looked up once and cached. Channel counts between grid points
are interpolated (bilinear for dense convs, whose time is close to
``a + b·cin + c·cout + d·cin·cout``, linear for the rest); beyond the grid the time is taken
proportional to the channel count. The grid is replaced by its lower monotone envelope when
it is built (:func:`monotone_envelope`) and the correction's coefficients are non-negative,
so the prediction never decreases when a width grows, which the width search of
:func:`rexsearch.space.fit_budget` relies on. A family the table lacks (another resolution,
kernel or spatial size) is refused with the command that builds one.

A table records where it was measured (:class:`~rexsearch.latency.device.Environment`);
:func:`load_table` and :func:`check_table_here` refuse a table built on another device,
runtime or thread count, naming both (docs/architecture.md, "Latency tables").
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rexsearch.config import ReXNetConfig
from rexsearch.errors import LatencyTableError, UserError
from rexsearch.files import loads_json, read_text_file, write_text_atomic
from rexsearch.latency.correction import Correction
from rexsearch.latency.device import Environment, environment, measure_latency
from rexsearch.latency.ops import (
    ACT_CONTEXTS,
    BLOCKED,
    COUNT_INDEX,
    KIND_INDEX,
    KINDS,
    PLAIN_INPUT_BELOW,
    SPLIT_OPS,
    WEIGHTS_INDEX,
    Op,
    config_segments,
    op_weights,
    segment_conversions,
)

TABLE_FORMAT = "rexsearch.latency-table/2"
#: Tables of format 1 keyed activations by (name, hw) alone; they load with that time in both
#: contexts of :data:`ACT_CONTEXTS`, which is how they were measured.
_FORMATS = (TABLE_FORMAT, "rexsearch.latency-table/1")

#: A table is a few hundred kilobytes; a file far larger is no table (and its automatic margin
#: would refit once per calibration row).
MAX_TABLE_BYTES = 32 * 2**20
#: Bounds on what a table can have been measured at (larger is damage, or a hostile file).
MAX_TABLE_RESOLUTION = 2048
MAX_TABLE_BATCH = 4096
MAX_TABLE_THREADS = 1024
MAX_CALIBRATION_ROWS = 10_000


@dataclass(frozen=True)
class Family:
    """Measured times (ms) of one operator family on a grid of channel counts (1 or 2 axes)."""

    op: str
    key: tuple[Any, ...]
    axes: tuple[tuple[int, ...], ...]
    ms: tuple[float, ...]  # row-major over the axes

    def value(self, coords: tuple[int, ...]) -> float:
        """Interpolated time at ``coords``: linear inside the grid (bilinear on two axes) and
        proportional to the channels outside it, which keeps it monotone in every coordinate."""
        if len(self.axes) == 1:
            return _interp1(self.axes[0], self.ms, coords[0])
        rows, cols = self.axes
        grid = self._rows
        x, y = coords
        if len(rows) == 1:
            return _interp1(cols, grid[0], y)
        if x <= rows[0]:
            return _interp1(cols, grid[0], y) * x / rows[0]
        if x >= rows[-1]:
            return _interp1(cols, grid[-1], y) * x / rows[-1]
        i = bisect.bisect_right(rows, x) - 1
        t = (x - rows[i]) / (rows[i + 1] - rows[i])
        lo = _interp1(cols, grid[i], y)
        return lo + (_interp1(cols, grid[i + 1], y) - lo) * t

    @cached_property
    def _rows(self) -> tuple[tuple[float, ...], ...]:
        n = len(self.axes[-1])
        return tuple(self.ms[i : i + n] for i in range(0, len(self.ms), n))

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "key": list(self.key),
            "axes": [list(a) for a in self.axes],
            "ms": list(self.ms),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Family:
        return cls(
            data["op"],
            tuple(data["key"]),
            tuple(tuple(int(v) for v in a) for a in data["axes"]),
            tuple(float(v) for v in data["ms"]),
        )


def _interp1(axis: Sequence[int], values: Sequence[float], x: float) -> float:
    """Piecewise-linear through the points, proportional to the channels outside them."""
    if len(axis) == 1:
        return values[0]
    if x <= axis[0]:
        return values[0] * x / axis[0]
    if x >= axis[-1]:
        return values[-1] * x / axis[-1]
    i = bisect.bisect_right(axis, x) - 1
    t = (x - axis[i]) / (axis[i + 1] - axis[i])
    return values[i] + (values[i + 1] - values[i]) * t


def channel_grid(
    low: int, high: int, points: int, multiple: int | None = None, avoid: int | None = None
) -> tuple[int, ...]:
    """About ``points`` geometrically spaced integers covering [low/1.25, high*1.25].

    With ``multiple``, every point is a multiple of it (the ends rounded outwards), so that
    the table times the aligned kernels that widths on that multiple run. With ``avoid``, no
    point is a multiple of it (each moved one channel, the ends outwards): the grid of the
    unblocked kernels, whose times a blocked point would pull down (:func:`monotone_envelope`).
    """
    a, b = max(1, math.floor(low / 1.25)), max(2, math.ceil(high * 1.25))
    if a >= b or points < 2:
        grid = (a,) if a == b else (a, b)
    else:
        ratio = (b / a) ** (1 / (points - 1))
        grid = tuple(sorted({max(1, round(a * ratio**i)) for i in range(points)} | {a, b}))
    if avoid and avoid > 1:
        moved = {v if v % avoid else (v - 1 if i == 0 and v > 1 else v + 1) for i, v in enumerate(grid)}
        return tuple(sorted(moved))
    if not multiple or multiple == 1:
        return grid
    m = multiple
    top = max(m, -(-b // m) * m)
    inner = {max(m, round(v / m) * m) for v in grid[1:-1]}
    aligned = inner | {max(m, a // m * m), top}
    if len(aligned) == 1:  # two points at least, so that wider widths interpolate upwards
        aligned.add(top + m)
    return tuple(sorted(aligned))


def monotone_envelope(axes: Sequence[Sequence[int]], ms: list[float]) -> list[float]:
    """The lower monotone envelope: each point becomes the least time at it or at any larger point.

    Noise from other work only ever adds time, so where a point measures slower than a
    larger one, the larger one's time is the better estimate; the result never decreases
    as channels grow along any axis.
    """
    if len(axes) == 1:
        out, best = [], math.inf
        for v in reversed(ms):
            best = min(best, v)
            out.append(best)
        return out[::-1]
    n = len(axes[1])
    rows = [monotone_envelope([axes[1]], ms[i * n : (i + 1) * n]) for i in range(len(axes[0]))]
    for i in range(len(rows) - 2, -1, -1):
        rows[i] = [min(a, b) for a, b in zip(rows[i], rows[i + 1], strict=True)]
    return [v for r in rows for v in r]


@dataclass(frozen=True)
class LatencyTable:
    """Per-operator latencies measured in one environment, plus the end-to-end correction."""

    environment: Environment
    resolution: int
    families: dict[tuple[str, tuple[Any, ...]], Family]
    correction: Correction
    versions: dict[str, str] = field(default_factory=dict)
    build_seconds: float = 0.0
    #: The multiple every channel grid point is on (``latency-table build --channel-multiple``).
    channel_multiple: int | None = None
    #: The input-channel multiple on which the runtime runs convolutions blocked; convolution
    #: and depthwise families are then measured off it and on it (:data:`BLOCKED`).
    blocked_alignment: int | None = None
    #: With a blocked alignment: the input channels below which a dense convolution runs
    #: blocked anyway (:func:`probe_plain_input_below`; None in a table that predates it).
    plain_input_below: int | None = None
    # Caches of what the fields above determine. Not constructor arguments, so that a copy
    # made by ``dataclasses.replace`` (another alignment, other families) starts with its own.
    _cache: dict[Op, float] = field(default_factory=dict, init=False, compare=False, repr=False)
    _segments: dict[tuple[Any, ...], tuple[float, ...]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    _layouts: dict[tuple[Any, ...], tuple[tuple[float, bool], ...]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    _parts: dict[Op, tuple[int, float, float]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def op_ms(self, op: Op) -> float:
        """Predicted time of one operator (cached)."""
        cached = self._cache.get(op)
        if cached is not None:
            return cached
        name, key, coords = op
        family = None
        if self.blocked_alignment and name in SPLIT_OPS and coords[0] % self.blocked_alignment == 0:
            family = self.families.get((name, (*key, BLOCKED)))
        family = family or self.families.get((name, key))
        if family is None:
            family = self._nearest_se(key) if name == "se" else None
            if family is None:
                raise LatencyTableError(self._missing(name, key))
        value = family.value(coords)
        self._cache[op] = value
        return value

    def _nearest_se(self, key: tuple[Any, ...]) -> Family | None:
        """SE time is pool and gating over c·hw; another ratio's family stands in for a missing ratio."""
        ratio, hw = key
        options = [k for (op, k) in self.families if op == "se" and k[1] == hw]
        if not options:
            return None
        best = min(options, key=lambda k: abs(k[0] - ratio))
        return self.families[("se", best)]

    def _missing(self, name: str, key: tuple[Any, ...]) -> str:
        return (
            f"the latency table has no {name} operators {key} (it covers {self.resolution}x{self.resolution} "
            f"inputs with the kernels, strides and heads of its calibration networks); build one for this "
            f"network with `rexsearch latency-table build --resolution {self.resolution} ...`"
        )

    def components(self, config: ReXNetConfig, resolution: int | None = None) -> tuple[float, ...]:
        """The table's summed time of each operator kind (:data:`KINDS` order), then the operator
        count, the millions of weights (:func:`op_weights`) and, on a table with a blocked
        alignment, the millions of elements the runtime converts between its layouts
        (:func:`segment_conversions`; 0 otherwise).

        Each segment (stem, block, head) is looked up once under its key and cached: a width
        search predicts thousands of networks that share most of their blocks' shapes.
        """
        parts, segments, layouts = self._parts, self._segments, self._layouts
        align, below = self.blocked_alignment, self.plain_input_below or PLAIN_INPUT_BELOW
        vecs, keys = [], []  # keys: for the conversions, which thread the layout through segments
        for key, segment in config_segments(config, resolution or self.resolution):
            if align:
                keys.append(key)
            vec = segments.get(key)
            if vec is None:
                acc = [0.0] * (len(KINDS) + 2)
                ops = segment()
                for op in ops:
                    part = parts.get(op)
                    if part is None:  # (kind, ms, millions of weights), once per operator shape
                        part = parts[op] = (KIND_INDEX[op[0]], self.op_ms(op), op_weights(op) / 1e6)
                    acc[part[0]] += part[1]
                    acc[WEIGHTS_INDEX] += part[2]
                acc[COUNT_INDEX] = float(len(ops))
                vec = segments[key] = tuple(acc)
                if align:  # its conversions from either layout of its input
                    layouts[key] = tuple(segment_conversions(key, b, align, below) for b in (False, True))
            vecs.append(vec)
        # column sums, each in segment order (as a running total would add them)
        sums = tuple(sum(column, 0.0) for column in zip(*vecs, strict=True))
        moved, blocked = 0.0, False  # the input image is in the plain layout
        if align:
            for key in keys:
                step, blocked = layouts[key][blocked]
                moved += step
        return (*sums, moved)

    def summed_ms(self, config: ReXNetConfig, resolution: int | None = None) -> float:
        """Sum of the operators' times, before the correction."""
        return sum(self.components(config, resolution)[: len(KINDS)])

    def predict(self, config: ReXNetConfig, resolution: int | None = None) -> float:
        ms = self.correction.apply(self.components(config, resolution))
        if not (math.isfinite(ms) and ms >= 0):  # never a negative or NaN prediction
            raise LatencyTableError(f"the latency table predicts {ms} ms for this network; it is damaged")
        return ms

    def check_environment(self, target: Environment, source: str = "the latency table") -> None:
        """Raise when the table was measured elsewhere than ``target``, naming both."""
        diff = self.environment.mismatches(target)
        if diff:
            raise LatencyTableError(
                f"{source} was built on {self.environment.describe()}, but the target is "
                f"{target.describe()} ({', '.join(diff)} differ); build a table there with "
                f"`rexsearch latency-table build --device {target.device} --runtime {target.runtime} "
                f"--threads {target.threads} --out FILE`"
            )

    def check_channel_multiple(self, multiple: int | None, source: str = "the latency table") -> None:
        """Refuse a search whose widths are not on the multiple this table's grid was built on
        (a multiple of it, e.g. 16 for a table on 8, is on it).

        Such a table times only aligned kernels, which ONNX Runtime runs much faster than
        unaligned ones: it would predict unaligned widths too fast. A table built without a
        multiple serves any search.
        """
        have = self.channel_multiple
        if have and (multiple or 1) % have:
            given = f"--channel-multiple {multiple}" if multiple else "no --channel-multiple"
            raise LatencyTableError(
                f"{source} was built for widths on multiples of {have} (latency-table build "
                f"--channel-multiple {have}) and the search has {given}: pass --channel-multiple "
                f"{have} (or a multiple of it), or use a table built without --channel-multiple"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "environment": self.environment.to_dict(),
            "resolution": self.resolution,
            "channel_multiple": self.channel_multiple,
            "blocked_alignment": self.blocked_alignment,
            "plain_input_below": self.plain_input_below,
            "versions": dict(self.versions),
            "build_seconds": self.build_seconds,
            "correction": self.correction.to_dict(),
            "families": [f.to_dict() for f in self.families.values()],
        }

    def save(self, path: str | Path) -> None:
        """Write the JSON file atomically (temporary file, then rename; an earlier file is
        left as it was if writing fails)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: Any, source: str = "<table>") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") not in _FORMATS:
            raise LatencyTableError(f"{source} is not a latency table (format {TABLE_FORMAT!r})")
        try:
            families = [Family.from_dict(f) for f in data["families"]]
            if data["format"] != TABLE_FORMAT:
                families = [g for f in families for g in _format1(f)]
            table = cls(
                Environment.from_dict(data["environment"]),
                int(data["resolution"]),
                {(f.op, f.key): f for f in families},
                Correction.from_dict(data["correction"]),
                dict(data.get("versions", {})),
                float(data.get("build_seconds", 0.0)),
                _multiple(data.get("channel_multiple")),
                _multiple(data.get("blocked_alignment"), "blocked_alignment"),
                _multiple(data.get("plain_input_below"), "plain_input_below"),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise LatencyTableError(
                f"{source} is a damaged latency table ({type(exc).__name__}: {exc})"
            ) from None
        problem = table.damage()
        if problem:
            raise LatencyTableError(f"{source} is a damaged latency table: {problem}")
        return table

    def damage(self) -> str | None:
        """What makes the table's numbers impossible, or None: times that are negative, NaN or
        infinite, channel axes that are not increasing positive integers, a resolution, batch or
        thread count beyond any measurement, too many calibration rows, a correction that is not
        finite or would predict less than nothing for a network of no time."""
        if not 8 <= self.resolution <= MAX_TABLE_RESOLUTION:
            return f"resolution {self.resolution} is outside 8..{MAX_TABLE_RESOLUTION}"
        env = self.environment
        if not 1 <= env.batch <= MAX_TABLE_BATCH:
            return f"batch {env.batch} is outside 1..{MAX_TABLE_BATCH}"
        if not 1 <= env.threads <= MAX_TABLE_THREADS:
            return f"threads {env.threads} is outside 1..{MAX_TABLE_THREADS}"
        for (op, key), family in self.families.items():
            if not all(math.isfinite(v) and v >= 0 for v in family.ms):
                return f"the family {op} {list(key)} has a negative or non-finite time"
            for axis in family.axes:
                if not axis or any(v < 1 for v in axis) or list(axis) != sorted(set(axis)):
                    return f"the family {op} {list(key)} has an axis that is not increasing positive channels"
        c = self.correction
        numbers = (
            c.intercept_ms,
            c.slope,
            c.per_op_ms,
            c.per_mweight_ms,
            c.per_mconversion_ms,
            *c.kind_slopes,
        )
        if not all(math.isfinite(v) for v in numbers):
            return "its correction holds a non-finite number"
        if c.intercept_ms < 0 or c.slope < 0 or min(c.kind_slopes, default=0.0) < 0:
            return "its correction would predict negative times (a negative intercept or slope)"
        if len(c.calibration) > MAX_CALIBRATION_ROWS:
            return f"{len(c.calibration):,} calibration rows, more than {MAX_CALIBRATION_ROWS:,}"
        return None


def _format1(family: Family) -> list[Family]:
    """A family of a format-1 table: its activations, keyed (name, hw), stand for both contexts."""
    if family.op != "act" or len(family.key) != 2:
        return [family]
    return [dataclasses.replace(family, key=(*family.key, after)) for after in ACT_CONTEXTS]


def _multiple(value: Any, field: str = "channel_multiple") -> int | None:
    """A table file's ``channel_multiple`` (or ``blocked_alignment``, ``plain_input_below``):
    absent or null, else an integer in 2..128."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 128:
        raise ValueError(f"{field} must be null or an integer in 2..128, got {value!r}")
    return value


def load_table(path: str | Path, expect: Environment | None = None) -> LatencyTable:
    """Read a table file; with ``expect``, refuse a table measured in another environment."""
    path = Path(path)
    text = read_text_file(path, "the latency table", MAX_TABLE_BYTES, LatencyTableError)
    data = loads_json(text, f"the latency table {path}", LatencyTableError)
    table = LatencyTable.from_dict(data, str(path))
    if expect is not None:
        table.check_environment(expect, f"the latency table {path}")
    return table


# ---------------------------------------------------------------------------- a search's table
def here_for(table_env: Environment) -> Environment:
    """This machine's environment for the device, runtime, threads and batch a table was built with."""
    try:
        return environment(table_env.device, table_env.runtime, table_env.threads, table_env.batch)
    except UserError as exc:
        raise LatencyTableError(
            f"the latency table was built on {table_env.describe()}, which this machine cannot run: {exc}"
        ) from None


def check_table_here(table: LatencyTable, source: str = "the latency table") -> Environment:
    """Refuse a table measured on another device, runtime or version than this machine (naming both)."""
    here = here_for(table.environment)
    table.check_environment(here, source)
    return here


#: Timing inside a trial: cheap next to training, enough for a median.
TRIAL_WARMUP = 2
TRIAL_REPEATS = 5


def measure_for_trial(
    config: ReXNetConfig,
    resolution: int,
    table_env: Environment,
    warmup: int = TRIAL_WARMUP,
    repeats: int = TRIAL_REPEATS,
    where: str = "worker",
) -> tuple[float | None, str]:
    """The median latency (ms) of ``config`` measured here when this machine is the table's
    environment, else ``None``; with a sentence saying where (``where``: the worker or the
    driver) it was, or why it was not, measured."""
    try:
        here = here_for(table_env)
    except LatencyTableError as exc:
        return None, str(exc)
    diff = table_env.mismatches(here)
    if diff:
        return None, (
            f"not measured: this {where} is {here.describe()}, the table's device is {table_env.describe()}"
        )
    result = measure_latency(config, resolution, warmup=warmup, repeats=repeats, env=here)
    return result.median_ms, f"measured on the {where} ({here.describe()}; median of {repeats} runs)"
