"""Cost model: analytic parameters/MACs from a config, fvcore measurement, budget strings.

Convention (design.md): ``macs`` are the multiply-accumulates of conv and linear layers
at ``resolution`` x ``resolution``, batch 1, eval mode — what ReXNet, timm and most
mobile-CNN papers call "FLOPs". ``fvcore_total`` is fvcore's total, which adds
BatchNorm (2 per element in eval) and adaptive average pooling (1 per input element).

The analytic count mirrors :mod:`rexsearch.model` primitive by primitive, so it equals
fvcore's conv+linear count and the real parameter count for every valid config.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass

from rexsearch.config import ReXNetConfig
from rexsearch.errors import BudgetError, UserError

#: The cost convention in one sentence, stated wherever MACs are shown (report, model cards, --help).
MACS_CONVENTION = (
    "MACs are multiply-accumulates of conv and linear layers at {where}, batch 1, eval mode (what the "
    "ReXNet paper, timm and most mobile-CNN papers call FLOPs); fvcore's total adds BatchNorm "
    "(2 per element) and pooling."
)


def macs_convention(resolution: int | None = None) -> str:
    """:data:`MACS_CONVENTION` for ``resolution`` (``None``: "the stated resolution")."""
    where = f"{resolution}x{resolution}" if resolution else "the stated resolution"
    return MACS_CONVENTION.format(where=where)


@dataclass(frozen=True)
class Cost:
    """Parameters, conv+linear MACs and fvcore's total (MACs + BN + pooling) at a resolution."""

    resolution: int
    params: int
    macs: int
    fvcore_total: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _Counter:
    """Accumulates cost primitive by primitive (the twin of the model's modules)."""

    def __init__(self, resolution: int) -> None:
        self.params = 0
        self.macs = 0
        self.other = 0  # BatchNorm and pooling, counted by fvcore's total only
        self.peak = 3 * resolution * resolution  # the largest tensor of one image, in values

    def conv(
        self, cin: int, cout: int, k: int, stride: int, hw: int, groups: int = 1, bias: bool = False
    ) -> int:
        out_hw = (hw + 2 * (k // 2) - k) // stride + 1
        weights = cout * (cin // groups) * k * k
        self.params += weights + (cout if bias else 0)
        self.macs += weights * out_hw * out_hw
        self.peak = max(self.peak, cout * out_hw * out_hw, cin * hw * hw)
        return out_hw

    def bn(self, channels: int, hw: int) -> None:
        self.params += 2 * channels
        self.other += 2 * channels * hw * hw

    def pool(self, channels: int, hw: int) -> None:
        self.other += channels * hw * hw

    def linear(self, cin: int, cout: int) -> None:
        self.params += cin * cout + cout
        self.macs += cin * cout

    def conv_bn(self, cin: int, cout: int, k: int, stride: int, hw: int, groups: int = 1) -> int:
        hw = self.conv(cin, cout, k, stride, hw, groups)
        self.bn(cout, hw)
        return hw


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")


def count_cost(config: ReXNetConfig, resolution: int = 224) -> Cost:
    """Exact parameters, MACs and fvcore total from the config alone (no model built)."""
    c = _count(config, resolution)
    return Cost(resolution, c.params, c.macs, c.macs + c.other)


def _count(config: ReXNetConfig, resolution: int) -> _Counter:
    _check_resolution(resolution)
    c = _Counter(resolution)
    hw = c.conv_bn(3, config.stem_channels, 3, config.stem_stride, resolution)
    for b in config.blocks:
        dw = b.dw_channels
        if b.has_expand:
            hw = c.conv_bn(b.in_channels, dw, 1, 1, hw)
        hw = c.conv_bn(dw, dw, b.kernel, b.stride, hw, groups=dw)
        if b.se:
            mid = dw // config.se_ratio
            c.pool(dw, hw)
            c.conv(dw, mid, 1, 1, 1, bias=True)
            c.bn(mid, 1)
            c.conv(mid, dw, 1, 1, 1, bias=True)
        hw = c.conv_bn(dw, b.out_channels, 1, 1, hw)
    hw = c.conv_bn(config.blocks[-1].out_channels, config.penultimate_channels, 1, 1, hw)
    c.pool(config.penultimate_channels, hw)
    c.linear(config.penultimate_channels, config.num_classes)
    return c


def memory_estimate(
    config: ReXNetConfig, resolution: int = 224, batch: int = 1, training: bool = False
) -> int:
    """Bytes that building ``config`` and running a no-grad forward of ``batch`` images take, roughly.

    Float32 weights (twice: the module and its initialisation) plus three live copies of
    the largest activation per image; from the config alone, so it can be checked before
    anything is allocated. ``training``: weights, gradients, momentum and the initialisation
    (four copies), and every activation kept for the backward pass (each conv's output, its
    BatchNorm and its nonlinearity: three per value BatchNorm normalises) for ``batch`` images.
    """
    c = _count(config, resolution)
    if training:
        return 4 * (4 * c.params + batch * (3 * (c.other // 2) + 3 * c.peak))
    return 4 * (2 * c.params + 3 * batch * c.peak)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``, else free physical pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


#: Used when the available memory cannot be read.
FALLBACK_MEMORY_LIMIT = 2**40


def check_memory(
    config: ReXNetConfig,
    resolution: int = 224,
    batch: int = 1,
    purpose: str = "build it",
    available: int | None = None,
    training: bool = False,
) -> None:
    """Raise a UserError, before anything is allocated, when ``config`` would not fit in memory.

    ``available`` (bytes) defaults to :func:`available_memory`; ``purpose`` completes
    "the network is too large to ...".
    """
    limit = available if available is not None else available_memory() or FALLBACK_MEMORY_LIMIT
    need = memory_estimate(config, resolution, batch, training)
    if need > limit:
        c = _count(config, resolution)
        raise UserError(
            f"the network is too large to {purpose}: it needs about {_bytes(need)} ({c.params:,} "
            f"parameters; up to {c.peak:,} activation values per image at {resolution}x{resolution}, "
            f"batch {batch}), more than the {_bytes(limit)} of memory available. "
            "Use a smaller config, resolution or batch."
        )


def _bytes(n: int) -> str:
    for suffix, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n:,} bytes"


@dataclass(frozen=True)
class MeasuredCost:
    """fvcore's view of a built model: real parameter count, conv+linear MACs, total."""

    resolution: int
    params: int
    macs: int
    total: int
    seconds: float

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "total": self.total}


def measure_cost(config: ReXNetConfig, resolution: int = 224) -> MeasuredCost:
    """Build the model and measure it with fvcore (eval mode, warnings silenced)."""
    import logging

    import torch
    from fvcore.nn import FlopCountAnalysis

    from rexsearch.model import build_model

    _check_resolution(resolution)
    model = build_model(config).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.zeros(1, 3, resolution, resolution)
    start = time.perf_counter()
    fvcore_logger = logging.getLogger("fvcore")
    level = fvcore_logger.level
    fvcore_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, x)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            by_op = analysis.by_operator()
            total = int(analysis.total())
    finally:
        fvcore_logger.setLevel(level)
    seconds = time.perf_counter() - start
    macs = int(sum(v for k, v in by_op.items() if k in ("conv", "linear", "addmm", "matmul")))
    return MeasuredCost(resolution, params, macs, total, seconds)


#: Budgets are stored as 64-bit integers (Optuna, SQLite); anything this large is a typo.
MAX_BUDGET = 2**63

_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGbB]?)\s*$")
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_budget(text: str | int | float, flag: str = "--flops-budget") -> int:
    """Parse ``400M``, ``0.4G``, ``1.5B``, ``400e6`` or ``400000000`` into an integer count.

    Suffixes K/M/G/B are case-insensitive (B means billion, like G). Anything else, and
    values that are not positive, raise :class:`BudgetError` naming ``flag``.
    """
    if isinstance(text, bool):
        raise BudgetError(f"{flag} must be a number such as 400M, 0.4G or 400e6, got {text!r}")
    if isinstance(text, (int, float)):
        text = repr(text)
    m = _BUDGET_RE.match(str(text))
    if not m:
        raise BudgetError(
            f"{flag} must be a number with an optional K/M/G/B suffix (e.g. 400M, 0.4G, 400e6), got {text!r}"
        )
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(value) or value >= MAX_BUDGET:
        raise BudgetError(
            f"{flag} {text!r} is too large: it overflows what a budget can count (below {MAX_BUDGET:.2g}); "
            "budgets are counts such as 400M or 1.5G"
        )
    if value < 1:
        raise BudgetError(f"{flag} must be positive, got {text!r}")
    return round(value)


def format_count(n: float) -> str:
    """Human form of a count: 398.37M, 4.80M, 1.50G."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(int(n))
