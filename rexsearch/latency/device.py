"""The device side of latency: where it is measured, how a network runs there, end-to-end timing.

:class:`Environment` records where a latency was measured (device, runtime and their
versions, threads, batch); :func:`environment` reads it off this machine. Every difference
between runtimes lives in this module: :func:`runner` runs a module once on eager torch
(CPU or CUDA, synchronised) or on ONNX Runtime (the exported graph); :func:`node_times`
reads ONNX Runtime's profiler; :func:`probe_blocked_alignment` and
:func:`probe_plain_input_below` read off the profile where the runtime uses its blocked
layout; :func:`profiles_nodes`, :func:`run_overhead_ms` and :func:`runtime_versions` answer
what a table build asks of the runtime. A new runtime is added here.

:func:`measure_latency` times a built network end to end: eval mode, BatchNorm folded into
the convolutions (as a deployed network runs), warm-up, then repeated timing; it reports the
median and the spread (interquartile range) with the settings recorded
(docs/architecture.md, "Latency").
"""

from __future__ import annotations

import copy
import io
import json
import math
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rexsearch.allocator import steady_allocator
from rexsearch.config import ReXNetConfig
from rexsearch.errors import LatencyTableError, UserError
from rexsearch.model import ConvBNAct, SqueezeExcite, build_model
from rexsearch.stats import quantile

DEVICES = ("cpu", "cuda")
RUNTIMES = ("torch", "onnxruntime")
#: ONNX Runtime's layout conversions to and from its blocked NCHWc layout (x86).
REORDERS = ("ReorderInput", "ReorderOutput")


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


def check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")


def environment(
    device: str = "cpu", runtime: str = "torch", threads: int | None = None, batch: int = 1
) -> Environment:
    """The environment of this machine for ``device`` and ``runtime`` (threads default: torch's)."""
    check_choice("device", device, DEVICES)
    check_choice("runtime", runtime, RUNTIMES)
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
def torch_threads(threads: int) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def runner(module: Any, inputs: tuple[Any, ...], env: Environment) -> Callable[[], Any]:
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


def profiles_nodes(env: Environment) -> bool:
    """Whether the runtime's profiler gives per-node times here (ONNX Runtime on the CPU):
    operators can then be timed as they run inside a graph, and the blocked layout probed."""
    return env.runtime == "onnxruntime" and env.device == "cpu"


def runtime_versions(env: Environment) -> dict[str, str]:
    """The versions a table built in ``env`` records."""
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    if env.runtime == "onnxruntime":
        versions["onnxruntime"] = env.runtime_version
    return versions


class _Sum(nn.Module):
    """The smallest graph with two inputs: their sum."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def run_overhead_ms(env: Environment, warmup: int, repeats: int) -> float:
    """The fixed cost (ms) of one run of a graph in ``env``'s runtime, whatever the graph (feeds,
    fetches, session bookkeeping): the fastest sample of a one-node graph on ONNX Runtime, 0 on
    eager torch, which has no graph to run."""
    if env.runtime != "onnxruntime":
        return 0.0
    tiny = runner(_Sum(), (torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)), env)
    return min(time_samples(tiny, warmup, repeats)) * 1e3


def probe_blocked_alignment(env: Environment) -> int | None:
    """The channel multiple at which ONNX Runtime on this CPU runs a depthwise convolution in its
    blocked layout (it pads output channels up to its block, but needs input channels on a
    multiple): the smallest of 2, 4, 8, 16 and 32 whose odd multiple ``3 * a`` is run blocked,
    read off the profile (a blocked graph has layout conversions). None where none is: another
    runtime, CUDA, or a CPU without the blocked kernels."""
    if not profiles_nodes(env):
        return None
    for a in (2, 4, 8, 16, 32):
        c = 3 * a
        conv = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        nodes = node_times(conv, (torch.zeros(1, c, 8, 8),), env, warmup=1, repeats=1)
        if any(kind in REORDERS for kind, _ in nodes):
            return a
    return None


def probe_plain_input_below(env: Environment) -> int:
    """The input-channel count below which ONNX Runtime on this CPU runs a dense convolution
    blocked although its inputs are off the blocked alignment (it reads the plain layout and
    writes the blocked one; :func:`~rexsearch.latency.ops.segment_conversions`): one more than
    the largest such odd count, read off the profile of a 1x1 convolution (a blocked one
    converts its output back)."""
    last = 1
    for c in range(3, 65, 2):
        nodes = node_times(nn.Conv2d(c, 16, 1), (torch.zeros(1, c, 8, 8),), env, warmup=1, repeats=1)
        if not any(kind in REORDERS for kind, _ in nodes):
            break
        last = c
    return last + 1


def node_times(
    module: Any, inputs: tuple[Any, ...], env: Environment, warmup: int, repeats: int
) -> list[tuple[str, float]]:
    """ONNX Runtime on the CPU: (operator type, ms) of every node of the optimised graph, each the
    fastest of its runs in the runtime's profiler (fused nodes as the runtime runs them, the
    layout conversions it inserted among them). Runs as many times as :func:`time_samples`."""
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


def time_samples(
    run: Callable[[], Any], warmup: int, repeats: int, min_sample_s: float = 2e-3
) -> list[float]:
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
    with torch_threads(env.threads):
        run = runner(model, (x,), env)
        samples = time_samples(run, warmup, repeats, min_sample_s=0.0)
    ms = [s * 1e3 for s in samples]
    return Latency(
        statistics.median(ms),
        quantile(ms, 0.75) - quantile(ms, 0.25),
        min(ms),
        quantile(ms, 0.9),
        repeats,
        warmup,
        resolution,
        env,
    )
