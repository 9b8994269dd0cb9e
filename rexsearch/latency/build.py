"""Building a latency table on the device, and checking it against the device later.

:func:`build_table` measures every operator a ReXNet-style network is made of — dense convs
(stem, expand, projection, head), depthwise convs, activations, SE, the (partial) residual
add and the classifier — on a grid of channel counts per operator family
(:func:`table_families`), each timed as it runs in a network (:class:`OperatorTimer`): on
eager torch alone; on ONNX Runtime with a channel multiple, read from its profiler with
fusions and layout conversions in context (:class:`InContext`); on ONNX Runtime without one,
convolutions measured apart on and off the input channels the runtime runs blocked. It then
times the calibration networks (:mod:`rexsearch.space.calibration`) end to end and fits the
correction on them (:func:`~rexsearch.latency.correction.fit_table_correction`).
:func:`check_drift` times a table's calibration networks again: how fast this machine is now
against the build (docs/architecture.md, "Latency tables").
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rexsearch.allocator import steady_allocator
from rexsearch.config import ACTIVATIONS, ReXNetConfig
from rexsearch.errors import LatencyTableError, UserError
from rexsearch.latency.correction import CORRECTIONS, Correction, fit_table_correction
from rexsearch.latency.device import (
    REORDERS,
    Environment,
    check_choice,
    environment,
    fold_batchnorm,
    measure_latency,
    node_times,
    probe_blocked_alignment,
    probe_plain_input_below,
    profiles_nodes,
    run_overhead_ms,
    runner,
    runtime_versions,
    time_samples,
    torch_threads,
)
from rexsearch.latency.ops import ACT_CONTEXTS, BLOCKED, KINDS, SPLIT_OPS, config_ops
from rexsearch.latency.table import Family, LatencyTable, channel_grid, check_table_here, monotone_envelope
from rexsearch.model import SqueezeExcite, make_activation
from rexsearch.space.calibration import CALIBRATION_NETWORKS, calibration_networks, calibration_shapes

#: SE ratios the shipped spaces can choose; a table measures each of them.
SE_RATIOS = (4, 8, 12, 16)

Progress = Callable[[str, int, int], None]


def _op_module(
    op: str, key: tuple[Any, ...], coords: tuple[int, ...], batch: int, extra: int = 1
) -> tuple[Any, tuple[Any, ...]]:
    """A module doing one operator, and its inputs (a partial add's output has ``extra`` more
    channels than its shortcut)."""
    gen = torch.Generator().manual_seed(0)
    if op == "conv":
        k, stride, hw = key
        cin, cout = coords
        return nn.Conv2d(cin, cout, k, stride, k // 2, bias=True), (
            torch.randn(batch, cin, hw, hw, generator=gen),
        )
    if op == "dw":
        k, stride, hw = key
        (c,) = coords
        return nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=True), (
            torch.randn(batch, c, hw, hw, generator=gen),
        )
    if op == "act":
        name, hw = key[:2]
        (c,) = coords
        return make_activation(name), (torch.randn(batch, c, hw, hw, generator=gen),)
    if op == "se":
        ratio, hw = key
        (c,) = coords
        return fold_batchnorm(nn.Sequential(SqueezeExcite(c, ratio))), (
            torch.randn(batch, c, hw, hw, generator=gen),
        )
    if op == "add":
        full, hw = key
        (c,) = coords
        out = torch.randn(batch, c if full else c + extra, hw, hw, generator=gen)
        return _Add(c, full), (out, torch.randn(batch, c, hw, hw, generator=gen))
    if op == "classifier":
        hw, classes = key
        (c,) = coords
        return _Classifier(c, classes), (torch.randn(batch, c, hw, hw, generator=gen),)
    raise ValueError(f"unknown operator {op!r}")


class InContext(nn.Module):
    """An operator between two 1x1 depthwise convolutions (``op`` None: the two convolutions alone).

    A graph runtime runs an operator differently inside a network than alone: ONNX Runtime
    fuses an activation into the convolution before it, keeps tensors in its blocked
    (NCHWc) layout from one convolution to the next, and converts them back and forth
    around the operators that cannot run in it (the SE gate's multiply, the partial add,
    some activations). The operator's cost in a network is read off this graph's profile
    (:func:`in_context_ms`).
    """

    def __init__(self, channels: int, op: nn.Module | None, shortcut: bool = False) -> None:
        super().__init__()
        # 1x1 depthwise: fused into, and kept in the blocked layout, as a 3x3 one is, at a ninth of its cost
        self.first = nn.Conv2d(channels, channels, 1, groups=channels)
        self.op, self.shortcut = op, shortcut
        self.last = nn.Conv2d(channels, channels, 1, groups=channels)

    def forward(self, x: torch.Tensor, *shortcut: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        if self.op is not None:
            y = self.op(y, *shortcut) if self.shortcut else self.op(y)
        return self.last(y)


class _Add(nn.Module):
    """The model's shortcut: a full add, or the partial add into the first channels."""

    def __init__(self, channels: int, full: bool) -> None:
        super().__init__()
        self.channels, self.full = channels, full

    def forward(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.full:
            return out + x
        out[:, : self.channels] += x
        return out


class _Classifier(nn.Module):
    """Global average pool and the linear classifier (dropout is the identity in eval mode)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def table_families(
    configs: Iterable[ReXNetConfig],
    resolution: int,
    points: int,
    activations: Sequence[str],
    se_ratios: Sequence[int],
    kernels: Sequence[int],
    multiple: int | None = None,
    blocked: int | None = None,
) -> list[tuple[str, tuple[Any, ...], tuple[tuple[int, ...], ...]]]:
    """Operator families with their grids, from the ranges the configs use (channel points on
    ``multiple`` when given; the stem's 3 input channels stay 3).

    With ``blocked`` (the alignment at which the runtime runs a convolution in a blocked
    layout, :func:`probe_blocked_alignment`), each convolution and depthwise family is measured
    twice: on input channels off that multiple, and (its key ending in :data:`BLOCKED`) on it.
    """
    ranges: dict[tuple[str, tuple[Any, ...]], list[list[int]]] = {}
    for cfg in configs:
        for op, key, coords in config_ops(cfg, resolution):
            r = ranges.setdefault((op, key), [[c, c] for c in coords])
            for axis, c in zip(r, coords, strict=True):
                axis[0], axis[1] = min(axis[0], c), max(axis[1], c)

    def merge(op: str, key: tuple[Any, ...], like: list[list[int]]) -> None:
        r = ranges.setdefault((op, key), [list(a) for a in like])
        for axis, other in zip(r, like, strict=True):
            axis[0], axis[1] = min(axis[0], other[0]), max(axis[1], other[1])

    for (op, key), r in list(ranges.items()):
        if op == "act":
            for name in activations:
                for after in ACT_CONTEXTS:
                    if name != "identity":
                        merge("act", (name, key[1], after), r)
        elif op == "se":
            for ratio in se_ratios:
                merge("se", (ratio, key[1]), r)
        elif op == "add":  # a full add (in == out) wherever a partial one runs, and back
            merge("add", (not key[0], key[1]), r)
        elif op == "dw":
            for k in kernels:
                merge("dw", (k, key[1], key[2]), r)
    out = []
    for (op, key), r in ranges.items():
        stem = op == "conv" and r[0][0] == r[0][1] == 3
        if blocked and op in SPLIT_OPS and not stem:
            (lo, hi), rest = r[0], tuple(channel_grid(a, b, points) for a, b in r[1:])
            out.append((op, key, (channel_grid(lo, hi, points, avoid=blocked), *rest)))
            out.append((op, (*key, BLOCKED), (channel_grid(lo, hi, points, blocked), *rest)))
            continue
        axes = tuple(
            (lo,) if stem and i == 0 else channel_grid(lo, hi, points, multiple)
            for i, (lo, hi) in enumerate(r)
        )
        if op == "se":  # an SE needs at least one channel in its bottleneck (on the multiple)
            floor = -(-key[0] // multiple) * multiple if multiple else key[0]
            axes = (tuple(sorted({max(c, floor) for c in axes[0]})),)
        out.append((op, key, axes))
    return out


class OperatorTimer:
    """The time (ms) of one operator of a table family, on the device, as it runs in a network.

    Eager torch runs every operator on its own: the operator is timed alone (the fastest of
    ``repeats`` samples) and an activation costs the same after a convolution as after the SE
    gate. ONNX Runtime on the CPU optimises the graph: it fuses an activation into the
    convolution before it where it can, keeps aligned tensors in its blocked NCHWc layout
    from one convolution to the next, and converts them around the operators that cannot run
    in it. For a table on a channel multiple (aligned widths, where that matters most) every
    time is then read from the runtime's profiler (each node the fastest of its runs): a
    convolution, a depthwise convolution and the classifier are their kernels without the
    layout conversions a graph of one operator adds; an activation after a convolution, an
    SE block and a shortcut add are timed between two 1x1 depthwise convolutions
    (:class:`InContext`, :func:`in_context_ms`), so that a fused activation costs what
    fusing it adds and an operator outside the blocked layout carries its conversions; an
    activation after the SE gate, which runs on its own, is its kernel. Otherwise (no
    multiple, or CUDA) the ONNX Runtime graph of one operator is timed end to end, less the
    fixed cost of one
    ``session.run``; there a family on the runtime's blocked alignment (:data:`BLOCKED`) is its
    kernel alone, read off the profile.
    """

    def __init__(self, env: Environment, warmup: int, repeats: int, multiple: int = 1) -> None:
        self.env, self.warmup, self.repeats, self.multiple = env, warmup, repeats, multiple
        # in context only on aligned grids: it predicts aligned networks better than operators
        # timed alone, and unaligned ones worse (reports/latency/measurements.md)
        self.profiled = profiles_nodes(env) and multiple > 1
        # a per-run cost (feeds, fetches, session bookkeeping) once per graph, not per node
        self.per_run_ms = 0.0 if self.profiled else run_overhead_ms(env, warmup, repeats)
        self._shared: dict[tuple[Any, ...], float] = {}  # an activation timed alone, either context

    def __call__(self, op: str, key: tuple[Any, ...], coords: tuple[int, ...]) -> float:
        blocked = op in SPLIT_OPS and key[-1] == BLOCKED
        if blocked:  # the same operator, its channels on the alignment
            key = key[:-1]
        shared = (op, key[:2], coords) if op == "act" and not self.profiled else None
        if shared in self._shared:
            return self._shared[shared]
        module, inputs = _op_module(op, key, coords, self.env.batch, self.multiple)
        if blocked:
            # its kernel alone: a graph of one blocked operator converts its input into the
            # blocked layout and back, which a run of blocked operators in a network does not
            return self._kernels(module, inputs)
        if not self.profiled:
            t = min(time_samples(runner(module, inputs, self.env), self.warmup, self.repeats)) * 1e3
            t = max(0.0, t - self.per_run_ms)
            if shared:
                self._shared[shared] = t
            return t
        if op in ("conv", "dw", "classifier") or (op == "act" and key[2] == "se"):
            return self._kernels(module, inputs)
        channels = inputs[0].shape[1]
        nodes = node_times(
            InContext(channels, module, shortcut=op == "add"), inputs, self.env, self.warmup, self.repeats
        )
        return in_context_ms(nodes)

    def _kernels(self, module: Any, inputs: tuple[Any, ...]) -> float:
        nodes = node_times(module, inputs, self.env, self.warmup, self.repeats)
        return sum(ms for kind, ms in nodes if kind not in REORDERS)


_CONVS = ("Conv", "FusedConv")


def in_context_ms(nodes: Sequence[tuple[str, float]]) -> float:
    """The cost of the operator of an :class:`InContext` graph from its profiled nodes (in the
    order they ran): every node between the two depthwise convolutions (the operator's own, and
    the layout conversions it needs), plus the first convolution less the last, which have the
    same shape, so that the difference is what fusing the operator into the first one costs.

    All of it comes from one session: the same kernel's time varies by tens of percent from one
    session to the next on a shared machine, more than a small operator costs.
    """
    convs = [i for i, (kind, _) in enumerate(nodes) if kind in _CONVS]
    if len(convs) < 2:
        raise LatencyTableError(
            f"the profile of an operator between two convolutions has {len(convs)} convolution nodes "
            f"({', '.join(kind for kind, _ in nodes)})"
        )
    first, last = convs[0], convs[-1]
    between = sum(ms for _, ms in nodes[first + 1 : last])
    return max(0.0, nodes[first][1] - nodes[last][1] + between)


def build_table(
    device: str = "cpu",
    runtime: str = "torch",
    threads: int | None = None,
    resolution: int = 224,
    batch: int = 1,
    shapes: Sequence[ReXNetConfig] | None = None,
    calibration: Sequence[ReXNetConfig] | None = None,
    points: int = 6,
    activations: Sequence[str] = ACTIVATIONS,
    se_ratios: Sequence[int] = SE_RATIOS,
    kernels: Sequence[int] = (3,),
    warmup: int = 3,
    repeats: int = 7,
    progress: Progress | None = None,
    correction: str = "line",
    channel_multiple: int | None = None,
) -> LatencyTable:
    """Measure every operator family on this machine and fit the end-to-end correction.

    Every time in the table is the fastest of its samples (each sample averages at least
    2 ms of runs), operators and calibration networks alike: other work on the machine only
    ever adds time, so the fastest sample is the steadiest estimate of the device itself.

    ``shapes`` (default :func:`calibration_shapes` and the calibration networks) set the
    channel range of each family's grid; ``calibration`` (default: :func:`calibration_networks`,
    or, when ``shapes`` are given, ``CALIBRATION_NETWORKS`` of them spread over them) are
    measured end to end for the correction. ``progress(stage, done, total)`` is called
    as measurements finish.

    ``channel_multiple`` builds a table for searches whose widths are on that multiple
    (``--channel-multiple``): every channel grid point is a multiple of it and the default
    calibration networks are decoded with it. The table records it, and a search with
    another multiple is refused (:meth:`LatencyTable.check_channel_multiple`).
    """
    start = time.perf_counter()
    check_choice("correction", correction, CORRECTIONS)
    if channel_multiple is not None and not 1 <= channel_multiple <= 128:
        raise UserError(f"the channel multiple must be in 1..128, got {channel_multiple}")
    channel_multiple = None if channel_multiple == 1 else channel_multiple
    env = environment(device, runtime, threads, batch)
    steady_allocator()
    if shapes is None:
        if calibration is None:
            calibration = calibration_networks(resolution=resolution, channel_multiple=channel_multiple)
        shapes = calibration_shapes() + list(calibration)
    shapes = list(shapes)
    if calibration is None and channel_multiple:
        # the correction is fitted on networks like the ones it will predict: on the multiple
        count = min(CALIBRATION_NETWORKS, len(shapes))
        calibration = calibration_networks(count, resolution, channel_multiple=channel_multiple)
        shapes += calibration
    if calibration is None:
        step = max(1, len(shapes) // CALIBRATION_NETWORKS)
        calibration = shapes[::step][:CALIBRATION_NETWORKS]
    # a table on a multiple times aligned kernels only; otherwise a channel count on the runtime's
    # blocked alignment runs another kernel, several times faster (measured off and on it)
    blocked = None if channel_multiple else probe_blocked_alignment(env)
    below = probe_plain_input_below(env) if blocked else None
    specs = table_families(
        shapes, resolution, points, activations, se_ratios, kernels, channel_multiple, blocked
    )
    total = sum(math.prod(len(a) for a in axes) for _, _, axes in specs)
    families: dict[tuple[str, tuple[Any, ...]], Family] = {}
    done = 0
    with torch_threads(env.threads), torch.no_grad():
        timer = OperatorTimer(env, warmup, repeats, channel_multiple or 1)
        for op, key, axes in specs:
            coords = [(c,) for c in axes[0]] if len(axes) == 1 else [(a, b) for a in axes[0] for b in axes[1]]
            ms = []
            for c in coords:
                ms.append(timer(op, key, c))
                done += 1
                if progress:
                    progress("operators", done, total)
            families[(op, key)] = Family(op, key, axes, tuple(monotone_envelope(axes, ms)))
    raw = LatencyTable(
        env, resolution, families, Correction(0.0, 1.0), blocked_alignment=blocked, plain_input_below=below
    )
    rows = []
    cal_warmup, cal_repeats = max(3, warmup), max(10, repeats)
    for i, cfg in enumerate(calibration):
        measured = measure_latency(cfg, resolution, env=env, warmup=cal_warmup, repeats=cal_repeats)
        parts = raw.components(cfg)
        rows.append(
            {
                "name": cfg.name or cfg.short_hash(),
                "summed_ms": sum(parts[: len(KINDS)]),
                "components": list(parts),
                "measured_ms": measured.min_ms,
                "median_ms": measured.median_ms,
                "warmup": cal_warmup,
                "repeats": cal_repeats,
                "config": cfg.to_dict(),
            }
        )
        if progress:
            progress("calibration", i + 1, len(calibration))
    fitted = fit_table_correction(rows, correction)
    versions = runtime_versions(env)
    return LatencyTable(
        env,
        resolution,
        families,
        fitted,
        versions,
        time.perf_counter() - start,
        channel_multiple,
        blocked,
        below,
    )


@dataclass(frozen=True)
class Drift:
    """A table's calibration networks timed again: how fast this machine is now against the build."""

    networks: tuple[dict[str, Any], ...]  # name, then_ms, now_ms (fastest runs), ratio, median_ratio
    ratio: float  # the median of now / then: below 1 the machine is faster now, above 1 slower

    def describe(self) -> str:
        change = self.ratio - 1.0
        if abs(change) < 0.005:
            pace = "as fast as"
        else:
            pace = f"{abs(change):.0%} {'slower' if change > 0 else 'faster'} than"
        return (
            f"this machine runs {pace} when the table was built (median of now / then over "
            f"{len(self.networks)} calibration networks, fastest runs: {self.ratio:.3f}); its "
            f"predictions are off by that much until it is rebuilt"
        )


#: Calibration networks :func:`check_drift` times by default (spread over the faster half of the table's).
DRIFT_NETWORKS = 6


def check_drift(
    table: LatencyTable, networks: int = DRIFT_NETWORKS, progress: Progress | None = None
) -> Drift:
    """Time up to ``networks`` of the table's calibration networks (spread over its faster half)
    again, here, as the build did (the fastest of as many runs, after as many warm-up runs, as
    the row records; 10 after 3 by default): the machine's drift since the build, which no
    table predicts.

    Refuses a table built elsewhere, and one whose calibration rows do not keep their configs
    (tables built before they did).
    """
    here = check_table_here(table)
    rows = [r for r in table.correction.calibration if "config" in r]
    if not rows:
        raise LatencyTableError(
            "the latency table's calibration networks do not record their configs (it was built by an "
            "older rexsearch); rebuild it with `rexsearch latency-table build` to check its drift"
        )
    if networks < 1:
        raise UserError(f"networks must be a positive integer, got {networks}")
    # spread over the faster half of the rows: the check stays a few seconds on any table
    rows = sorted(rows, key=lambda r: r["measured_ms"])[: max(networks, (len(rows) + 1) // 2)]
    step = max(1, len(rows) // networks)
    chosen = rows[::step][:networks]
    out = []
    for i, row in enumerate(chosen):
        config = ReXNetConfig.from_dict(row["config"])
        # as many runs as the build timed: the fastest of more runs is lower by itself
        warmup, repeats = int(row.get("warmup", 3)), int(row.get("repeats", 10))
        lat = measure_latency(config, table.resolution, env=here, warmup=warmup, repeats=repeats)
        entry = {
            "name": row["name"],
            "then_ms": row["measured_ms"],
            "now_ms": lat.min_ms,
            "ratio": lat.min_ms / row["measured_ms"],
        }
        if "median_ms" in row:  # the medians too, for the record (the ratio is of fastest runs)
            entry["median_ratio"] = lat.median_ms / row["median_ms"]
        out.append(entry)
        if progress:
            progress("drift", i + 1, len(chosen))
    return Drift(tuple(out), statistics.median(r["ratio"] for r in out))
