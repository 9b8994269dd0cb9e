"""Latency on the deployment device: end-to-end measurement, a per-operator lookup table, a predictor.

* :func:`measure_latency` times a built network end to end: eval mode, BatchNorm folded
  into the convolutions (as a deployed network runs), warm-up, then repeated timing; it
  reports the median and the spread (interquartile range) with the settings recorded
  (device and its name, runtime and version, threads, batch). CUDA is timed with
  synchronisation; ONNX Runtime runs the exported graph (``pip install 'rexsearch[onnx]'``).
* :func:`build_table` measures, on the device, every operator a ReXNet-style network is
  made of — dense convs (stem, expand, projection, head), depthwise convs, activations, SE,
  the (partial) residual add and the classifier — on a grid of channel counts per operator
  family (same kernel, stride, spatial size); on ONNX Runtime with a channel multiple, read
  from its profiler with fusions and layout conversions in context (:class:`_OperatorTimer`);
  on ONNX Runtime without one, convolutions measured apart on and off the input channels the
  runtime runs blocked (:func:`_blocked_alignment`, :data:`BLOCKED`).
  It fits a correction for what the sum misses (framework overhead between operators,
  weights evicted from the cache) on ``CALIBRATION_NETWORKS``
  end-to-end calibration networks, decoded from the shipped spaces at random MACs budgets
  as a search draws them: ``median = a + b · summed + c · weights + d · operators``
  (non-negative, ``b > 0``, :func:`fit_line`), or with ``correction="kinds"`` ``a + Σ b_k · summed_k +
  c · operators + d · weights`` over the operator kinds :data:`KINDS`, non-negative, fitted
  for relative error (:func:`fit_kind_correction`). A table with a blocked alignment adds
  ``e · converted``, the tensor elements ONNX Runtime converts between its blocked and plain
  layouts (:func:`segment_conversions`), which no operator timed alone shows.
* :func:`predict_latency` sums the table's operators of each kind for a config and applies
  the correction; each segment (stem, block, head) is looked up once and cached. Channel
  counts between grid points are interpolated (bilinear for dense convs, whose time is
  close to ``a + b·cin + c·cout + d·cin·cout``, linear for the rest); beyond the grid the
  time is taken proportional to the channel count. The grid is replaced by its lower
  monotone envelope when it is built and the correction's coefficients are non-negative,
  so the prediction never decreases when a width grows, which the bisection of
  :func:`rexsearch.space.fit_budget` relies on. A family the table lacks (another
  resolution, kernel or spatial size) is refused with the command that builds one.

A table records where it was measured (:class:`Environment`); :func:`load_table` refuses a
table built on another device, runtime or thread count, naming both.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import io
import json
import math
import platform
import random
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rexsearch.allocator import steady_allocator
from rexsearch.config import ACTIVATIONS, BlockConfig, ReXNetConfig
from rexsearch.errors import BudgetError, UserError
from rexsearch.files import write_text_atomic
from rexsearch.model import ConvBNAct, SqueezeExcite, build_model, make_activation

TABLE_FORMAT = "rexsearch.latency-table/2"
#: Tables of format 1 keyed activations by (name, hw) alone; they load with that time in both
#: contexts of :data:`ACT_CONTEXTS`, which is how they were measured.
_FORMATS = (TABLE_FORMAT, "rexsearch.latency-table/1")
DEVICES = ("cpu", "cuda")
RUNTIMES = ("torch", "onnxruntime")
#: SE ratios the shipped spaces can choose; a table measures each of them.
SE_RATIOS = (4, 8, 12, 16)
#: Widths at which the calibration shapes are built: they set the range of each grid.
CALIBRATION_WIDTHS = (0.25, 0.5, 1.0, 2.0, 3.0)
#: Networks timed end to end to fit the correction, and the fewest for a per-kind fit
#: (:func:`fit_kind_correction`); with fewer, one line through (summed, measured) is fitted.
CALIBRATION_NETWORKS = 36
MIN_KIND_CALIBRATION = 16
#: The fewest calibration networks the weights term is fitted on (:func:`fit_weights_line`).
MIN_WEIGHTS_CALIBRATION = 8
#: The MACs range (at 224x224, scaled by the resolution's area) of the calibration networks,
#: which are decoded from the shipped spaces as a search draws its candidates.
CALIBRATION_MACS = (100e6, 1.2e9)
#: ``line``: one line through (summed, measured) (the default: on this project's 2-core VM the
#: per-kind fit ranked networks no better (Kendall tau 0.905 against 0.914 on 187 networks,
#: median error 6.4% against 7.9%) and its coefficients can make the prediction jump where
#: a shortcut appears, so a width search misses its 3% window more often);
#: ``kinds``: :func:`fit_kind_correction`.
CORRECTIONS = ("line", "kinds")
#: The share of a table's calibration networks ``--latency-margin auto`` keeps within a budget.
AUTO_MARGIN_SHARE = 0.95
#: Calibration networks ``--latency-margin auto`` needs at least: the rank it reads,
#: ceil((n + 1) * AUTO_MARGIN_SHARE), is within n only from 19 on.
MIN_AUTO_MARGIN_CALIBRATION = 19

Progress = Callable[[str, int, int], None]


class LatencyTableError(UserError):
    """A latency table does not fit the request (another device or runtime, a missing family)."""


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


# ---------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class Environment:
    """Where a latency was measured: what must match for a table to be reused."""

    device: str
    device_name: str
    runtime: str
    runtime_version: str
    threads: int
    batch: int = 1

    def describe(self) -> str:
        return (
            f"{self.device} ({self.device_name}) with {self.runtime} {self.runtime_version}, "
            f"{self.threads} thread{'s' if self.threads != 1 else ''}, batch {self.batch}"
        )

    def mismatches(self, other: Environment) -> list[str]:
        """Names of the fields where ``other`` differs."""
        return [k for k in asdict(self) if getattr(self, k) != getattr(other, k)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Environment:
        return cls(
            **{k: data[k] for k in ("device", "device_name", "runtime", "runtime_version", "threads")},
            batch=int(data.get("batch", 1)),
        )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")


def environment(
    device: str = "cpu", runtime: str = "torch", threads: int | None = None, batch: int = 1
) -> Environment:
    """The environment of this machine for ``device`` and ``runtime`` (threads default: torch's)."""
    _check_choice("device", device, DEVICES)
    _check_choice("runtime", runtime, RUNTIMES)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda needs a CUDA GPU and a CUDA build of torch; none is available here"
            )
        name = torch.cuda.get_device_name()
    else:
        name = _cpu_name()
    if runtime == "onnxruntime":
        ort = _onnxruntime()
        version = ort.__version__
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(
                "--runtime onnxruntime --device cuda needs onnxruntime-gpu (CUDAExecutionProvider)"
            )
    else:
        version = torch.__version__
    if threads is not None and threads < 1:
        raise UserError(f"threads must be a positive integer, got {threads}")
    return Environment(device, name, runtime, version, threads or torch.get_num_threads(), batch)


def _onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError:
        raise UserError(
            "--runtime onnxruntime needs onnx and onnxruntime: pip install 'rexsearch[onnx]'"
        ) from None
    return onnxruntime


# ---------------------------------------------------------------------------- timing
@contextmanager
def _torch_threads(threads: int) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _runner(module: Any, inputs: tuple[Any, ...], env: Environment) -> Callable[[], Any]:
    """One synchronised forward of ``module`` on ``inputs`` in ``env``'s runtime and device."""
    module = module.eval()
    if env.runtime == "onnxruntime":
        session, feed = _ort_session(module, inputs, env)
        return lambda: session.run(None, feed)
    if env.device == "cuda":
        module = module.cuda()
        inputs = tuple(x.cuda() for x in inputs)

        def run_cuda() -> Any:
            with torch.inference_mode():
                out = module(*inputs)
            torch.cuda.synchronize()
            return out

        return run_cuda

    def run_cpu() -> Any:
        with torch.inference_mode():
            return module(*inputs)

    return run_cpu


def _ort_session(
    module: Any, inputs: tuple[Any, ...], env: Environment, profile_prefix: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """An ONNX Runtime session of ``module`` exported (opset 17) with its feed; with
    ``profile_prefix``, profiling every node into a file of that prefix."""
    ort = _onnxruntime()
    buffer = io.BytesIO()
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, buffer, dynamo=False, input_names=names, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = env.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    providers = ["CUDAExecutionProvider"] if env.device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(buffer.getvalue(), options, providers=providers)
    return session, {n: x.numpy() for n, x in zip(names, inputs, strict=True)}


#: ONNX Runtime's layout conversions to and from its blocked NCHWc layout (x86).
_REORDERS = ("ReorderInput", "ReorderOutput")
#: The last element of the key of a family measured on input channels on the runtime's
#: blocked alignment (:func:`_families`), and the operators that have such families.
BLOCKED = "blocked"
_SPLIT = ("conv", "dw")
#: Activations ONNX Runtime on the CPU runs only in the plain layout: a tensor in the blocked
#: one is converted back before them (seen for ELU and softplus in the profiles of this
#: project's VM; mish is softplus, tanh and a product). The others are fused into the
#: convolution before them or run on blocked tensors.
PLAIN_ACTIVATIONS = frozenset({"elu", "softplus", "mish"})
#: A dense convolution with fewer input channels than this reads the plain layout and writes
#: the blocked one: the runtime's channel block, 16 with AVX-512 (this project's VM). A table
#: probes it on its machine (:func:`_plain_input_below`); this stands in where none was.
PLAIN_INPUT_BELOW = 16


def _dense_conversions(cin: int, area: int, blocked: bool, alignment: int, below: int) -> tuple[int, bool]:
    """(elements converted before a dense convolution over ``cin`` inputs of ``area`` pixels,
    whether it writes the blocked layout). It runs blocked on inputs on the alignment, and on
    fewer than ``below`` (which it reads in the plain layout); otherwise plain."""
    runs_blocked = cin % alignment == 0 or cin < below
    reads_blocked = runs_blocked and cin >= below
    return (cin * area if reads_blocked != blocked else 0), runs_blocked


def segment_conversions(
    key: tuple[Any, ...], blocked: bool, alignment: int, below: int = PLAIN_INPUT_BELOW
) -> tuple[float, bool]:
    """Millions of tensor elements ONNX Runtime converts between its blocked and its plain
    layout in one segment of :func:`config_segments` (by its key), given the layout of its
    input, and whether the segment's output is blocked.

    The rules, read off the runtime's profiles of whole networks on this project's VM
    (onnxruntime 1.32): a depthwise convolution runs blocked when its channels are on the
    blocked ``alignment``, a dense one also when it has fewer than ``below`` inputs (it then
    reads the plain layout; :data:`PLAIN_INPUT_BELOW`), and a dense one that runs plain
    converts a blocked input; an SE block and the activations of :data:`PLAIN_ACTIVATIONS`
    need the plain layout; a partial shortcut adds in it (converting a blocked input and a
    blocked projection), an identity add of two layouts converts one side; everything else
    keeps the layout it is given. Each change of layout converts the tensor at that point once. A
    table of single operators does not see these conversions (a median of 5.5% of a
    network's time, 1-13% from one network to the next); the correction weighs the count.
    """
    moved, plain = 0, PLAIN_ACTIVATIONS  # straight-line code: a width search calls it often
    if key[0] == "block":
        _, cin, cout, expansion, kernel, stride, se_ratio, hw, exp_act, dw_act, shortcut = key
        dw, area, block_input = cin * expansion, hw * hw, blocked
        if expansion != 1:  # the expand conv
            step, blocked = _dense_conversions(cin, area, blocked, alignment, below)
            moved += step
            if blocked and exp_act in plain:
                moved, blocked = moved + dw * area, False
        if (dw % alignment == 0) != blocked:  # the depthwise conv
            moved, blocked = moved + dw * area, not blocked
        out_hw = _out_hw(hw, kernel, stride)
        out_area = out_hw * out_hw
        if blocked and (se_ratio is not None or dw_act in plain):
            moved, blocked = moved + dw * out_area, False
        step, blocked = _dense_conversions(dw, out_area, blocked, alignment, below)  # the projection
        moved += step
        if shortcut and cin != cout:  # a partial shortcut adds in the plain layout, both sides
            if blocked:
                moved, blocked = moved + cout * out_area, False
            if block_input:
                moved += cin * area
        elif shortcut and blocked != block_input:  # an identity add of two layouts: plain
            moved, blocked = moved + cout * out_area, False
    elif key[0] == "stem":
        _, resolution, stride, channels, activation = key
        hw = _out_hw(resolution, 3, stride)
        # a dense convolution over the three channels of the plain image
        _, blocked = _dense_conversions(3, resolution * resolution, False, alignment, below)
        if blocked and activation in plain:
            moved, blocked = channels * hw * hw, False
    else:  # the head
        _, hw, last, pen, activation, _ = key
        moved, blocked = _dense_conversions(last, hw * hw, blocked, alignment, below)
        if blocked and activation in plain:
            moved, blocked = moved + pen * hw * hw, False
    return moved / 1e6, blocked


def _blocked_alignment(env: Environment) -> int | None:
    """The channel multiple at which ONNX Runtime on this CPU runs a depthwise convolution in its
    blocked layout (it pads output channels up to its block, but needs input channels on a
    multiple): the smallest of 2, 4, 8, 16 and 32 whose odd multiple ``3 * a`` is run blocked,
    read off the profile (a blocked graph has layout conversions). None where none is: another
    runtime, CUDA, or a CPU without the blocked kernels."""
    if env.runtime != "onnxruntime" or env.device != "cpu":
        return None
    for a in (2, 4, 8, 16, 32):
        c = 3 * a
        conv = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        nodes = _node_times(conv, (torch.zeros(1, c, 8, 8),), env, warmup=1, repeats=1)
        if any(kind in _REORDERS for kind, _ in nodes):
            return a
    return None


def _plain_input_below(env: Environment) -> int:
    """The input-channel count below which ONNX Runtime on this CPU runs a dense convolution
    blocked although its inputs are off the blocked alignment (it reads the plain layout and
    writes the blocked one; :func:`segment_conversions`): one more than the largest such odd count,
    read off the profile of a 1x1 convolution (a blocked one converts its output back)."""
    last = 1
    for c in range(3, 65, 2):
        nodes = _node_times(nn.Conv2d(c, 16, 1), (torch.zeros(1, c, 8, 8),), env, warmup=1, repeats=1)
        if not any(kind in _REORDERS for kind, _ in nodes):
            break
        last = c
    return last + 1


def _node_times(
    module: Any, inputs: tuple[Any, ...], env: Environment, warmup: int, repeats: int
) -> list[tuple[str, float]]:
    """ONNX Runtime on the CPU: (operator type, ms) of every node of the optimised graph, each the
    fastest of its runs in the runtime's profiler (fused nodes as the runtime runs them, the
    layout conversions it inserted among them). Runs as many times as :func:`_samples`."""
    with tempfile.TemporaryDirectory(prefix="rexsearch-ort-") as tmp:
        session, feed = _ort_session(module, inputs, env, str(Path(tmp) / "profile"))
        for _ in range(max(warmup, 1)):
            session.run(None, feed)
        start = time.perf_counter()
        session.run(None, feed)
        once = time.perf_counter() - start
        # the fastest of this many runs is steady per node; more only make the profile longer
        number = max(1, min(20, math.ceil(2e-3 / max(once, 1e-7))))
        for _ in range(repeats * number):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    fastest: dict[str, tuple[str, float]] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            op, us = e.get("args", {}).get("op_name", "?"), float(e["dur"])
            if name not in fastest or us < fastest[name][1]:
                fastest[name] = (op, us)
    if not fastest:
        raise LatencyTableError(
            "ONNX Runtime's profiler recorded no node times, which a table for it is built from "
            f"(onnxruntime {env.runtime_version})"
        )
    return [(op, us / 1e3) for op, us in fastest.values()]


def _samples(run: Callable[[], Any], warmup: int, repeats: int, min_sample_s: float = 2e-3) -> list[float]:
    """Per-call seconds of ``repeats`` samples; short calls are looped so a sample lasts ``min_sample_s``."""
    for _ in range(max(warmup, 1)):
        run()
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    number = max(1, min(1000, math.ceil(min_sample_s / max(once, 1e-7))))
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            run()
        out.append((time.perf_counter() - start) / number)
    return out


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# ---------------------------------------------------------------------------- BN folding
def fold_batchnorm(model: Any) -> Any:
    """A copy of a built ReXNet (eval mode) with every BatchNorm folded into the conv before it."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, ConvBNAct):
            m.conv, m.bn = fuse_conv_bn_eval(m.conv, m.bn), nn.Identity()
        elif isinstance(m, SqueezeExcite):
            m.fc1, m.bn = fuse_conv_bn_eval(m.fc1, m.bn), nn.Identity()
    return model


# ---------------------------------------------------------------------------- end to end
@dataclass(frozen=True)
class Latency:
    """End-to-end latency of one network: median and spread (IQR) of ``repeats`` timings, in ms."""

    median_ms: float
    spread_ms: float
    min_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    resolution: int
    environment: Environment

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "spread_ms": self.spread_ms,
            "min_ms": self.min_ms,
            "p90_ms": self.p90_ms,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "resolution": self.resolution,
            "batch": self.environment.batch,
            "bn_folded": True,
            "settings": self.environment.to_dict(),
        }


def measure_latency(
    config: ReXNetConfig,
    resolution: int = 224,
    device: str = "cpu",
    runtime: str = "torch",
    threads: int | None = None,
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    env: Environment | None = None,
) -> Latency:
    """End-to-end latency of ``config`` (eval mode, BN folded) on this machine."""
    env = env or environment(device, runtime, threads, batch)
    steady_allocator()
    torch.manual_seed(0)
    model = fold_batchnorm(build_model(config))
    x = torch.randn(env.batch, 3, resolution, resolution)
    with _torch_threads(env.threads):
        run = _runner(model, (x,), env)
        samples = _samples(run, warmup, repeats, min_sample_s=0.0)
    ms = [s * 1e3 for s in samples]
    return Latency(
        statistics.median(ms),
        _quantile(ms, 0.75) - _quantile(ms, 0.25),
        min(ms),
        _quantile(ms, 0.9),
        repeats,
        warmup,
        resolution,
        env,
    )


# ---------------------------------------------------------------------------- operators
def _out_hw(hw: int, k: int, stride: int) -> int:
    return (hw + 2 * (k // 2) - k) // stride + 1


Op = tuple[str, tuple[Any, ...], tuple[int, ...]]  # (op, family key, channel coordinates)


def config_ops(config: ReXNetConfig, resolution: int) -> list[Op]:
    """The inference operators of ``config`` (BN folded), mirroring :mod:`rexsearch.model`.

    Families: ``conv`` (k, stride, hw) over (cin, cout); ``dw`` (k, stride, hw) over c;
    ``act`` (name, hw, after) over c, ``after`` one of :data:`ACT_CONTEXTS`; ``se`` (ratio,
    hw) over c; ``add`` (full, hw) over the shortcut's channels; ``classifier`` (hw, classes)
    over the penultimate width. ``hw`` is the input size of the operator.
    """
    return [op for _, segment in config_segments(config, resolution) for op in segment()]


#: Where an activation runs: right after a convolution (which a graph runtime can fuse it
#: into), or after the SE gate's multiply (where it runs on its own).
ACT_CONTEXTS = ("conv", "se")


def _act(ops: list[Op], name: str, c: int, hw: int, after: str = "conv") -> None:
    if name != "identity":
        ops.append(("act", (name, hw, after), (c,)))


def config_segments(
    config: ReXNetConfig, resolution: int
) -> list[tuple[tuple[Any, ...], Callable[[], list[Op]]]]:
    """The operators of ``config`` in segments (stem, each block, head), each with a key that
    determines its operators: the predictor caches a segment's time under its key."""
    out: list[tuple[tuple[Any, ...], Callable[[], list[Op]]]] = []

    def stem(hw: int = resolution) -> list[Op]:
        ops: list[Op] = [("conv", (3, config.stem_stride, hw), (3, config.stem_channels))]
        _act(ops, config.activation, config.stem_channels, _out_hw(hw, 3, config.stem_stride))
        return ops

    out.append((("stem", resolution, config.stem_stride, config.stem_channels, config.activation), stem))
    hw = _out_hw(resolution, 3, config.stem_stride)
    for b in config.blocks:
        exp_act, dw_act, shortcut = (
            config.block_activation(b),
            config.block_dw_activation(b),
            config.uses_shortcut(b),
        )

        def block(
            b: BlockConfig = b,
            hw: int = hw,
            exp_act: str = exp_act,
            dw_act: str = dw_act,
            shortcut: bool = shortcut,
        ) -> list[Op]:
            ops: list[Op] = []
            dw = b.dw_channels
            if b.expansion != 1:
                ops.append(("conv", (1, 1, hw), (b.in_channels, dw)))
                _act(ops, exp_act, dw, hw)
            ops.append(("dw", (b.kernel, b.stride, hw), (dw,)))
            out_hw = _out_hw(hw, b.kernel, b.stride)
            if b.se:
                ops.append(("se", (config.se_ratio, out_hw), (dw,)))
            _act(ops, dw_act, dw, out_hw, "se" if b.se else "conv")
            ops.append(("conv", (1, 1, out_hw), (dw, b.out_channels)))
            if shortcut:
                ops.append(("add", (b.in_channels == b.out_channels, out_hw), (b.in_channels,)))
            return ops

        se_ratio = config.se_ratio if b.se else None
        out.append(
            (
                (
                    "block",
                    b.in_channels,
                    b.out_channels,
                    b.expansion,
                    b.kernel,
                    b.stride,
                    se_ratio,
                    hw,
                    exp_act,
                    dw_act,
                    shortcut,
                ),
                block,
            )
        )
        hw = _out_hw(hw, b.kernel, b.stride)
    last, pen = config.blocks[-1].out_channels, config.penultimate_channels

    def head(hw: int = hw) -> list[Op]:
        ops: list[Op] = [("conv", (1, 1, hw), (last, pen))]
        _act(ops, config.activation, pen, hw)
        ops.append(("classifier", (hw, config.num_classes), (pen,)))
        return ops

    out.append((("head", hw, last, pen, config.activation, config.num_classes), head))
    return out


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


class _InContext(nn.Module):
    """An operator between two 1x1 depthwise convolutions (``op`` None: the two convolutions alone).

    A graph runtime runs an operator differently inside a network than alone: ONNX Runtime
    fuses an activation into the convolution before it, keeps tensors in its blocked
    (NCHWc) layout from one convolution to the next, and converts them back and forth
    around the operators that cannot run in it (the SE gate's multiply, the partial add,
    some activations). The operator's cost in a network is read off this graph's profile
    (:func:`_in_context_ms`).
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


# ---------------------------------------------------------------------------- grids
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


def _grid(
    low: int, high: int, points: int, multiple: int | None = None, avoid: int | None = None
) -> tuple[int, ...]:
    """About ``points`` geometrically spaced integers covering [low/1.25, high*1.25].

    With ``multiple``, every point is a multiple of it (the ends rounded outwards), so that
    the table times the aligned kernels that widths on that multiple run. With ``avoid``, no
    point is a multiple of it (each moved one channel, the ends outwards): the grid of the
    unblocked kernels, whose times a blocked point would pull down (:func:`_monotone`).
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


def _monotone(axes: Sequence[Sequence[int]], ms: list[float]) -> list[float]:
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
    rows = [_monotone([axes[1]], ms[i * n : (i + 1) * n]) for i in range(len(axes[0]))]
    for i in range(len(rows) - 2, -1, -1):
        rows[i] = [min(a, b) for a, b in zip(rows[i], rows[i + 1], strict=True)]
    return [v for r in rows for v in r]


# ---------------------------------------------------------------------------- the table
#: Operator kinds the correction weighs separately, in the order of :meth:`LatencyTable.components`
#: (which then gives the operator count and the millions of weights).
KINDS = ("conv", "dw", "act", "se", "add", "classifier")
_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
_COUNT, _WEIGHTS, _CONVERSIONS = len(KINDS), len(KINDS) + 1, len(KINDS) + 2


def op_weights(op: Op) -> int:
    """The weights (with biases; BatchNorm folded) one operator reads per inference."""
    name, key, coords = op
    if name == "conv":
        cin, cout = coords
        return cin * cout * key[0] ** 2 + cout
    if name == "dw":
        return coords[0] * (key[0] ** 2 + 1)
    if name == "se":
        c, mid = coords[0], coords[0] // key[0]
        return 2 * c * mid + mid + c
    if name == "classifier":
        return (coords[0] + 1) * key[1]
    return 0


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
        kinds, count = components[: len(KINDS)], components[_COUNT]
        weights = components[_WEIGHTS] if len(components) > _WEIGHTS else 0.0
        moved = components[_CONVERSIONS] if len(components) > _CONVERSIONS else 0.0
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
    per_op, per_mweight = slopes[_COUNT], slopes[_WEIGHTS] if len(slopes) > _WEIGHTS else 0.0
    per_mconversion = slopes[_CONVERSIONS] if len(slopes) > _CONVERSIONS else 0.0
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


def fit_line(
    summed: Sequence[float],
    weights: Sequence[float],
    operators: Sequence[float],
    measured: Sequence[float],
) -> tuple[float, float, float, float]:
    """``(intercept, slope, per_mweight, per_op)`` of ``measured = a + b · summed + c · weights +
    d · operators``, all non-negative and the slope positive, by least squares weighted by
    ``1 / measured`` (relative error, which the predictor is judged by).

    The operator term is what a network pays per operator beyond the operator's own timed
    cost (on eager torch, the dispatch between modules). With fewer than
    ``MIN_WEIGHTS_CALIBRATION`` rows (several coefficients from a handful of noisy rows fit the
    noise), or when no such fit has a positive slope, the line of :func:`fit_correction` alone.
    """
    intercept, slope, (per_mweight, per_op) = fit_terms(summed, [weights, operators], measured)
    return intercept, slope, per_mweight, per_op


def fit_terms(
    summed: Sequence[float], terms: Sequence[Sequence[float]], measured: Sequence[float]
) -> tuple[float, float, tuple[float, ...]]:
    """``(intercept, slope, coefficients)`` of ``measured = a + b · summed + Σ c_j · terms[j]``
    under the rules of :func:`fit_line`, for any number of extra terms (columns of the rows)."""
    import numpy as np
    from scipy.optimize import nnls

    y = np.array(measured, dtype=float)
    if len(y) >= MIN_WEIGHTS_CALIBRATION:
        a = np.column_stack([np.ones_like(y), np.array(summed, dtype=float), *map(np.array, terms)])
        coef, _ = nnls(a / y[:, None], np.ones_like(y))
        if coef[1] > 0:
            return float(coef[0]), float(coef[1]), tuple(float(v) for v in coef[2:])
    return (*fit_correction(summed, measured), (0.0,) * len(terms))


def fit_weights_line(
    summed: Sequence[float], weights: Sequence[float], measured: Sequence[float]
) -> tuple[float, float, float]:
    """``(intercept, slope, per_mweight)``: :func:`fit_line` without the operator term."""
    return fit_line(summed, weights, [0.0] * len(summed), measured)[:3]


def fit_table_correction(calibration: Sequence[dict[str, Any]], kind: str = "line") -> Correction:
    """The correction of ``kind`` (:data:`CORRECTIONS`) on a table's calibration rows
    (``summed_ms``, ``components``, ``median_ms``); ``kinds`` needs ``MIN_KIND_CALIBRATION``
    rows and falls back to the line with fewer. The line has the weights term when every row
    records the network's weights (``components`` of an older table do not).

    The target is each network's median time, the statistic a trial measures and a latency
    budget is judged by (on this project's VM the median ran 4-9% above the fastest run); a
    row of an older table without it is fitted to its fastest run (``measured_ms``).
    """
    measured = [r.get("median_ms", r["measured_ms"]) for r in calibration]
    if kind == "kinds" and len(calibration) >= MIN_KIND_CALIBRATION:
        return fit_kind_correction([r["components"] for r in calibration], measured, calibration)
    summed = [r["summed_ms"] for r in calibration]
    if calibration and all(len(r.get("components", ())) > _WEIGHTS for r in calibration):
        columns = [[r["components"][i] for r in calibration] for i in (_WEIGHTS, _COUNT)]
        if all(len(r["components"]) > _CONVERSIONS for r in calibration):
            columns.append([r["components"][_CONVERSIONS] for r in calibration])
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
    #: blocked anyway (:func:`_plain_input_below`; None in a table that predates it).
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
        if self.blocked_alignment and name in _SPLIT and coords[0] % self.blocked_alignment == 0:
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
                        part = parts[op] = (_KIND_INDEX[op[0]], self.op_ms(op), op_weights(op) / 1e6)
                    acc[part[0]] += part[1]
                    acc[_WEIGHTS] += part[2]
                acc[_COUNT] = float(len(ops))
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
        return self.correction.apply(self.components(config, resolution))

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
            return cls(
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
        except (KeyError, TypeError, ValueError) as exc:
            raise LatencyTableError(
                f"{source} is a damaged latency table ({type(exc).__name__}: {exc})"
            ) from None


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
    space: Any,
    budget: Any,
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
    if table is None or budget.latency_ms is None:
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


def predict_latency(config: ReXNetConfig, table: LatencyTable, resolution: int | None = None) -> float:
    """Predicted end-to-end latency (ms) of ``config`` in the table's environment."""
    return table.predict(config, resolution)


def load_table(path: str | Path, expect: Environment | None = None) -> LatencyTable:
    """Read a table file; with ``expect``, refuse a table measured in another environment."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise LatencyTableError(f"cannot read the latency table {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise LatencyTableError(f"{path} is not a latency table (not valid JSON: {exc.msg})") from None
    table = LatencyTable.from_dict(data, str(path))
    if expect is not None:
        table.check_environment(expect, f"the latency table {path}")
    return table


# ---------------------------------------------------------------------------- building
def calibration_shapes(per_space: int = 6, seed: int = 1000) -> list[ReXNetConfig]:
    """Presets and random shapes of every shipped space at several widths: they set the grids' ranges."""
    from rexsearch.principles import PRESETS
    from rexsearch.space import SPACES_DIR, _RandomTrial, load_space

    rng = random.Random(seed)
    out = [p.config() for p in PRESETS.values()]
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        space = load_space(path)
        for _ in range(per_space):
            values = space.suggest(_RandomTrial(rng))
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
    """``count`` candidates decoded from the shipped spaces in turn, each at a MACs budget drawn
    log-uniformly from ``CALIBRATION_MACS`` (scaled by the resolution's area): networks like
    the ones a search predicts, to fit the end-to-end correction on.

    Shapes at fixed width multipliers (:func:`calibration_shapes`) span the grids but are not
    what a width solver produces (a multiplier of 3 or 0.25 of a random shape); a correction
    fitted on them missed decoded candidates by a median of 21% on this project's VM, one
    fitted on decoded ones by 6-10% (reports in the README). ``channel_multiple`` decodes them
    with widths on that multiple, as a ``--channel-multiple`` search does.
    """
    from rexsearch.space import SPACES_DIR, Budget, _RandomTrial, load_space

    rng = random.Random(seed)
    spaces = [load_space(path) for path in sorted(SPACES_DIR.glob("*.yaml"))]
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
            out.append(space.decode(space.suggest(_RandomTrial(rng)), budget).config)
        except UserError:
            continue
    return out


def _families(
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
    layout, :func:`_blocked_alignment`), each convolution and depthwise family is measured
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
        if blocked and op in _SPLIT and not stem:
            (lo, hi), rest = r[0], tuple(_grid(a, b, points) for a, b in r[1:])
            out.append((op, key, (_grid(lo, hi, points, avoid=blocked), *rest)))
            out.append((op, (*key, BLOCKED), (_grid(lo, hi, points, blocked), *rest)))
            continue
        axes = tuple(
            (lo,) if stem and i == 0 else _grid(lo, hi, points, multiple) for i, (lo, hi) in enumerate(r)
        )
        if op == "se":  # an SE needs at least one channel in its bottleneck (on the multiple)
            floor = -(-key[0] // multiple) * multiple if multiple else key[0]
            axes = (tuple(sorted({max(c, floor) for c in axes[0]})),)
        out.append((op, key, axes))
    return out


class _OperatorTimer:
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
    (:class:`_InContext`, :func:`_in_context_ms`), so that a fused activation costs what
    fusing it adds and an operator outside the blocked layout carries its conversions; an
    activation after the SE gate, which runs on its own, is its kernel. Otherwise (no
    multiple, or CUDA) the ONNX Runtime graph of one operator is timed end to end, less the
    fixed cost of one
    ``session.run``; there a family on the runtime's blocked alignment (:data:`BLOCKED`) is its
    kernel alone, read off the profile.
    """

    def __init__(self, env: Environment, warmup: int, repeats: int, multiple: int = 1) -> None:
        self.env, self.warmup, self.repeats, self.multiple = env, warmup, repeats, multiple
        # in context only on aligned grids: on this project's VM it cut the median error on
        # aligned networks from 12.9% to 4.8%, but a table of unaligned widths timed so missed
        # by 20.4% (14.1% timed alone, an earlier day); see the README
        self.profiled = env.runtime == "onnxruntime" and env.device == "cpu" and multiple > 1
        self.per_run_ms = 0.0
        if env.runtime == "onnxruntime" and not self.profiled:
            # a per-run cost (feeds, fetches, session bookkeeping) once per graph, not per node
            tiny = _runner(_Add(1, True), (torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)), env)
            self.per_run_ms = min(_samples(tiny, warmup, repeats)) * 1e3
        self._shared: dict[tuple[Any, ...], float] = {}  # an activation timed alone, either context

    def __call__(self, op: str, key: tuple[Any, ...], coords: tuple[int, ...]) -> float:
        blocked = op in _SPLIT and key[-1] == BLOCKED
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
            t = min(_samples(_runner(module, inputs, self.env), self.warmup, self.repeats)) * 1e3
            t = max(0.0, t - self.per_run_ms)
            if shared:
                self._shared[shared] = t
            return t
        if op in ("conv", "dw", "classifier") or (op == "act" and key[2] == "se"):
            return self._kernels(module, inputs)
        channels = inputs[0].shape[1]
        nodes = _node_times(
            _InContext(channels, module, shortcut=op == "add"), inputs, self.env, self.warmup, self.repeats
        )
        return _in_context_ms(nodes)

    def _kernels(self, module: Any, inputs: tuple[Any, ...]) -> float:
        nodes = _node_times(module, inputs, self.env, self.warmup, self.repeats)
        return sum(ms for kind, ms in nodes if kind not in _REORDERS)


_CONVS = ("Conv", "FusedConv")


def _in_context_ms(nodes: Sequence[tuple[str, float]]) -> float:
    """The cost of the operator of an :class:`_InContext` graph from its profiled nodes (in the
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
    _check_choice("correction", correction, CORRECTIONS)
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
    blocked = None if channel_multiple else _blocked_alignment(env)
    below = _plain_input_below(env) if blocked else None
    specs = _families(shapes, resolution, points, activations, se_ratios, kernels, channel_multiple, blocked)
    total = sum(math.prod(len(a) for a in axes) for _, _, axes in specs)
    families: dict[tuple[str, tuple[Any, ...]], Family] = {}
    done = 0
    with _torch_threads(env.threads), torch.no_grad():
        timer = _OperatorTimer(env, warmup, repeats, channel_multiple or 1)
        for op, key, axes in specs:
            coords = [(c,) for c in axes[0]] if len(axes) == 1 else [(a, b) for a in axes[0] for b in axes[1]]
            ms = []
            for c in coords:
                ms.append(timer(op, key, c))
                done += 1
                if progress:
                    progress("operators", done, total)
            families[(op, key)] = Family(op, key, axes, tuple(_monotone(axes, ms)))
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
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    if runtime == "onnxruntime":
        versions["onnxruntime"] = env.runtime_version
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
