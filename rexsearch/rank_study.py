"""The ReXNet paper's random-network rank studies: single blocks (Figure 1) and channel configurations.

**The block study** (:func:`run_rank_study`) measures ``rank(f(block(X))) / d_out`` of one
random block against the dimension ratio ``d_in / d_out``, averaged over random-sized
networks, for four block kinds and eight nonlinearities. Two protocols:

- ``paper`` (default), the protocol the paper's Figure 1 implies: each network sees
  ``N = d_out + PAPER_EXTRA_ROWS`` inputs (the fewest with ``N > d_out``) with ``d_in``
  channels, each entry ``PAPER_INPUT_SCALE·|g|`` for a standard normal ``g`` (a half-normal,
  non-negative as features after a ReLU are), and a 1x1 spatial size (so a 3x3 conv reduces
  to its centre tap and a depthwise conv to a per-channel scale); ``d_out`` uniform in
  ``PAPER_D_OUT``; weights standard normal (``torch.randn``, not scaled by the fan-in),
  biases PyTorch's default ``U(±1/sqrt(fan_in))``; BatchNorm as in a freshly initialised
  layer in ``eval()`` mode, i.e. the identity; the rank is the numerical rank of the float32
  output at one fixed relative tolerance ``PAPER_RTOL`` (``258·eps ≈ 3.1e-5``, which is
  ``torch.linalg.matrix_rank``'s default tolerance for a 258 x 256 matrix) for every size.
  The input distribution and scale, the ``d_out`` range, ``N`` and the tolerance are the
  variant of a sweep that comes closest to the paper's read-offs
  (reports/rank-study/README.md lists the others). The inverted bottlenecks expand by
  ``PAPER_EXPANSION``.
- ``batchnorm``, the protocol of ``rexsearch rank``'s ``batchnorm`` setting: one Gaussian
  ``S x S`` image with ``S = ceil(sqrt(2·d_out))``, Gaussian weights scaled by the fan-in,
  every conv followed by BatchNorm on batch statistics, ``d_out`` uniform in
  ``STUDY_D_OUT``, the rank at the relative tolerance ``RTOL`` on ``2·d_out`` rows,
  expansion ``STUDY_EXPANSION``.

In both, the nonlinearity follows every conv but the projection of an inverted
bottleneck (after its expansion and after its 3x3 conv); the projection is linear and
the input is added to the first ``d_in`` output channels (ReXNet's partial shortcut); the
same network and input serve all eight nonlinearities (a paired comparison).

**The channel-configuration study** (:func:`run_channel_study`) is the paper's second rank
experiment: random ``L``-layer networks of 1x1 convs from ``d_in = d_out / CHANNEL_GROWTH``
to ``d_out`` channels, of which ``k`` layers (at random positions) expand the channels in
equal steps and the others keep the width; the rank of the final feature against ``k``,
for several depths and for SiLU or ReLU after the expand layers (ReLU after the others).
With the ``paper`` protocol the weights are scaled by ``1/sqrt(fan_in)`` so that a deep
stack neither overflows nor saturates; the rest is as in the block study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from rexsearch.errors import UserError
from rexsearch.rank import ROWS_PER_CHANNEL, RTOL, numerical_rank

#: Block kinds of the study, with their labels.
STUDY_BLOCKS: dict[str, str] = {
    "conv1x1": "single 1x1 conv",
    "conv3x3": "single 3x3 conv",
    "ib_conv3x3": "inverted bottleneck, 3x3 conv",
    "ib_dwconv3x3": "inverted bottleneck, 3x3 depthwise conv",
}
#: Nonlinearities of the study (functional, so one pre-activation serves all of them).
STUDY_NONLINEARITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda z: z,
    "relu6": F.relu6,
    "relu": F.relu,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "elu": F.elu,
    "softplus": F.softplus,
    "hardswish": F.hardswish,
    "silu": F.silu,
}
DIM_RATIOS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))

#: ``batchnorm`` protocol: inverted-bottleneck expansion (ReXNet's and MobileNetV2's t) and d_out.
STUDY_EXPANSION = 6
STUDY_D_OUT = (64, 256)
QUICK_D_OUT = (16, 32)
#: ``paper`` protocol: expansion (the variant closest to the paper's panels, see the
#: report), d_out range and the rows beyond d_out.
PAPER_EXPANSION = 2
PAPER_D_OUT = (16, 128)
PAPER_QUICK_D_OUT = (16, 64)
PAPER_EXTRA_ROWS = 1
#: ``paper`` protocol: input entries are ``PAPER_INPUT_SCALE·|N(0, 1)|``; the rank's relative
#: tolerance is one fixed value for every size (``torch.linalg.matrix_rank``'s default,
#: ``max(M, C)·eps``, of a 258 x 256 matrix).
PAPER_INPUT_SCALE = 1.2
PAPER_RTOL = 258 * float(torch.finfo(torch.float32).eps)
PROTOCOLS: dict[str, str] = {
    "paper": f"{PAPER_INPUT_SCALE:g}·|N(0,1)| inputs, 1x1 maps, N = d_out + {PAPER_EXTRA_ROWS}, "
    f"randn weights, BN as identity, rank at rtol {PAPER_RTOL:.2g}",
    "batchnorm": f"Gaussian image, BN on batch statistics, rank at rtol {RTOL:g}",
}
DEFAULT_PROTOCOL = "paper"
#: Networks per point: the paper's 1,000 for the block study under the ``paper`` protocol,
#: 300 for the ``batchnorm`` protocol (images, so slower) and the channel study.
PAPER_NETWORKS = 1000
STUDY_NETWORKS = 300
QUICK_NETWORKS = 4
CSV_COLUMNS = ("block", "nonlinearity", "dim_ratio", "rank_ratio", "std", "networks")

#: Channel-configuration study: depths, total channel growth d_out / d_in, compared nonlinearities.
CHANNEL_DEPTHS = (2, 4, 8, 12)
QUICK_CHANNEL_DEPTHS = (2, 4)
CHANNEL_GROWTH = 10
CHANNEL_NONLINEARITIES = ("silu", "relu")
CHANNEL_COLUMNS = ("depth", "expand_layers", "nonlinearity", "rank_ratio", "std", "networks")


@contextmanager
def _one_thread() -> Iterator[None]:
    """One torch thread: the study's matrices are small, and thread hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown rank-study protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def _check_range(lo: int, hi: int) -> None:
    if not 1 <= lo <= hi:
        raise UserError(f"d_out must be a range lo..hi with 1 <= lo <= hi, got {lo}..{hi}")


# ---------------------------------------------------------------------- batchnorm protocol
def _standardize(z: torch.Tensor) -> torch.Tensor:
    """Train-mode BatchNorm (weight 1, bias 0) of ``(G, B, C, H, W)``, per group and channel."""
    mean = z.mean((1, 3, 4), keepdim=True)
    var = z.var((1, 3, 4), unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + 1e-5)


def _apply_each(z: torch.Tensor, shared: bool) -> torch.Tensor:
    """``(G, ...)``: every study nonlinearity applied to ``z`` (``shared``) or to its own ``z[g]``."""
    fns = STUDY_NONLINEARITIES.values()
    if shared:
        return torch.stack([f(z) for f in fns])
    return torch.stack([f(zg) for f, zg in zip(fns, z, strict=True)])


def _grouped(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a conv ``fn`` to ``(G, B, C, H, W)`` by folding the groups into the batch."""
    g, b = x.shape[:2]
    out = fn(x.flatten(0, 1))
    return out.reshape(g, b, *out.shape[1:])


def _batchnorm_block(
    kind: str, x: torch.Tensor, d_out: int, expansion: float, generator: torch.Generator
) -> torch.Tensor:
    """Outputs ``(G, B, d_out, H, W)`` of one random block for every study nonlinearity."""
    d_in = x.shape[1]

    def weight(c_out: int, c_in: int, k: int) -> torch.Tensor:
        return torch.randn(c_out, c_in, k, k, generator=generator) / math.sqrt(c_in * k * k)

    if kind in ("conv1x1", "conv3x3"):
        k = 1 if kind == "conv1x1" else 3
        z = _standardize(F.conv2d(x, weight(d_out, d_in, k), padding=k // 2).unsqueeze(0))[0]
        return _apply_each(z, shared=True)
    hidden = max(1, round(expansion * d_in))
    h = _apply_each(_standardize(F.conv2d(x, weight(hidden, d_in, 1)).unsqueeze(0))[0], shared=True)
    if kind == "ib_conv3x3":
        w = weight(hidden, hidden, 3)
        h = _grouped(h, lambda t: F.conv2d(t, w, padding=1))
    else:
        w = torch.randn(hidden, 1, 3, 3, generator=generator) / 3.0
        h = _grouped(h, lambda t: F.conv2d(t, w, padding=1, groups=hidden))
    h = _apply_each(_standardize(h), shared=False)
    w = weight(d_out, hidden, 1)
    out = _standardize(_grouped(h, lambda t: F.conv2d(t, w)))
    out[:, :, :d_in] += x
    return out


def _batchnorm_network(
    kind: str, ratio: float, lo: int, hi: int, expansion: float, rtol: float, generator: torch.Generator
) -> np.ndarray:
    """Rank ratios (one per nonlinearity) of one random network under the ``batchnorm`` protocol."""
    d_out = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    d_in = max(1, round(ratio * d_out))
    size = math.ceil(math.sqrt(ROWS_PER_CHANNEL * d_out))
    x = torch.randn(1, d_in, size, size, generator=generator)
    out = _batchnorm_block(kind, x, d_out, expansion, generator)
    flat = out.permute(0, 1, 3, 4, 2).reshape(out.shape[0], -1, d_out)
    keep = torch.randperm(flat.shape[1], generator=generator)[: ROWS_PER_CHANNEL * d_out]
    return numerical_rank(flat[:, keep], rtol).numpy() / d_out


# ---------------------------------------------------------------------- paper protocol
def _paper_input(d_out: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
    """``(d_out + PAPER_EXTRA_ROWS, d_in)`` half-normal inputs of the ``paper`` protocol."""
    return torch.randn(d_out + PAPER_EXTRA_ROWS, d_in, generator=generator).abs() * PAPER_INPUT_SCALE


def _affine(
    x: torch.Tensor, c_out: int, generator: torch.Generator, fan: int, scale: float = 1.0
) -> torch.Tensor:
    """``x @ W + b`` on ``(..., N, C)``: ``W`` standard normal times ``scale``, ``b`` ~ U(±1/sqrt(fan))."""
    w = torch.randn(x.shape[-1], c_out, generator=generator) * scale
    bound = 1.0 / math.sqrt(fan)
    return x @ w + (torch.rand(c_out, generator=generator) * 2 - 1) * bound


def _paper_block(
    kind: str, x: torch.Tensor, d_out: int, expansion: float, generator: torch.Generator
) -> torch.Tensor:
    """Outputs ``(G, N, d_out)`` of one random block on 1x1 maps for every study nonlinearity.

    BatchNorm of a fresh layer in eval mode is the identity and is left out.
    """
    d_in = x.shape[-1]
    if kind in ("conv1x1", "conv3x3"):
        taps = 1 if kind == "conv1x1" else 9
        return _apply_each(_affine(x, d_out, generator, taps * d_in), shared=True)
    hidden = max(1, round(expansion * d_in))
    h = _apply_each(_affine(x, hidden, generator, d_in), shared=True)
    if kind == "ib_conv3x3":
        h = _affine(h, hidden, generator, 9 * hidden)
    else:
        scale = torch.randn(hidden, generator=generator)
        h = h * scale + (torch.rand(hidden, generator=generator) * 2 - 1) / 3.0
    h = _apply_each(h, shared=False)
    out = _affine(h, d_out, generator, hidden)
    out[..., :d_in] += x
    return out


def _paper_network(
    kind: str, ratio: float, lo: int, hi: int, expansion: float, rtol: float, generator: torch.Generator
) -> np.ndarray:
    """Rank ratios (one per nonlinearity) of one random network under the ``paper`` protocol."""
    d_out = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    d_in = max(1, round(ratio * d_out))
    x = _paper_input(d_out, d_in, generator)
    return numerical_rank(_paper_block(kind, x, d_out, expansion, generator), rtol).numpy() / d_out


# ---------------------------------------------------------------------- the block study
def run_rank_study(
    networks: int | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: Callable[[int, int], None] | None = None,
    rtol: float | None = None,
    d_out: tuple[int, int] | None = None,
    blocks: Sequence[str] | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    expansion: float | None = None,
) -> pd.DataFrame:
    """The paper's random-network rank study: rank(block output) / d_out against d_in / d_out.

    For each block kind (``blocks``, default all of ``STUDY_BLOCKS``), dimension ratio and
    network, ``d_out`` is drawn uniformly from the inclusive range ``d_out`` (the protocol's
    default, smaller with ``quick``) and ``d_in = max(1, round(ratio·d_out))``; the rest is the
    ``protocol`` (see the module docstring). ``rtol`` (default: ``PAPER_RTOL`` for ``paper``, ``RTOL`` for
    ``batchnorm``) and ``expansion`` override the protocol's. ``progress(done, total)`` is
    called after each (block kind, ratio) point. Returns one row per block kind,
    nonlinearity and ratio with ``CSV_COLUMNS`` (``std``: standard deviation across networks);
    ``attrs["settings"]`` records the settings.
    """
    _check_protocol(protocol)
    paper = protocol == "paper"
    networks = networks or (QUICK_NETWORKS if quick else PAPER_NETWORKS if paper else STUDY_NETWORKS)
    if networks < 1:
        raise UserError(f"networks must be a positive integer, got {networks}")
    if d_out is None:
        d_out = (
            (PAPER_QUICK_D_OUT if quick else PAPER_D_OUT)
            if paper
            else (QUICK_D_OUT if quick else STUDY_D_OUT)
        )
    lo, hi = d_out
    _check_range(lo, hi)
    rtol = (PAPER_RTOL if paper else RTOL) if rtol is None else rtol
    if not 0.0 <= rtol < 1.0:
        raise UserError(f"rtol must be in [0, 1), got {rtol}")
    expansion = (PAPER_EXPANSION if paper else STUDY_EXPANSION) if expansion is None else expansion
    if expansion <= 0:
        raise UserError(f"expansion must be positive, got {expansion}")
    kinds = list(blocks or STUDY_BLOCKS)
    unknown = [k for k in kinds if k not in STUDY_BLOCKS]
    if unknown:
        raise UserError(f"unknown block kind {unknown[0]!r}; known: {', '.join(STUDY_BLOCKS)}")
    one_network = _paper_network if paper else _batchnorm_network
    generator = torch.Generator().manual_seed(seed)
    cells = [(kind, ratio) for kind in kinds for ratio in DIM_RATIOS]
    with torch.no_grad(), _one_thread() if paper else nullcontext():
        stats = _averaged(
            cells,
            lambda kind, ratio: one_network(kind, ratio, lo, hi, expansion, rtol, generator),
            networks,
            progress,
        )
    records = [
        (kind, name, ratio, mean[j], std[j], networks)
        for (kind, ratio), mean, std in stats
        for j, name in enumerate(STUDY_NONLINEARITIES)
    ]
    df = pd.DataFrame.from_records(records, columns=list(CSV_COLUMNS))
    df.attrs["settings"] = {
        "protocol": protocol,
        "networks": networks,
        "seed": seed,
        "quick": quick,
        "d_out": [lo, hi],
        "expansion": expansion,
        "rtol": rtol,
    }
    return df


def _averaged(
    cells: Sequence[tuple[Any, Any]],
    draw: Callable[[Any, Any], np.ndarray],
    networks: int,
    progress: Callable[[int, int], None] | None,
) -> list[tuple[tuple[Any, Any], list[float], list[float]]]:
    """For each cell, the mean and sample std (0 for one network) of ``networks`` draws of
    ``draw(*cell)`` (one rank ratio per nonlinearity), drawn in cell order."""
    out = []
    for done, cell in enumerate(cells, start=1):
        ratios = np.stack([draw(*cell) for _ in range(networks)])
        std = ratios.std(0, ddof=1) if networks > 1 else np.zeros(ratios.shape[1])
        out.append((cell, [float(v) for v in ratios.mean(0)], [float(v) for v in std]))
        if progress is not None:
            progress(done, len(cells))
    return out


# ---------------------------------------------------------------------- the channel study
def _expand_positions(depth: int, expand_layers: int, generator: torch.Generator) -> list[bool]:
    """Which of ``depth`` layers expand: ``expand_layers`` of them, at random positions."""
    chosen = set(torch.randperm(depth, generator=generator)[:expand_layers].tolist())
    return [i in chosen for i in range(depth)]


def _channel_network(
    depth: int,
    expand_layers: int,
    lo: int,
    hi: int,
    protocol: str,
    rtol: float,
    generator: torch.Generator,
) -> np.ndarray:
    """Rank ratios of the final feature of one random network, one per ``CHANNEL_NONLINEARITIES``."""
    d_out = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    d_in = max(1, round(d_out / CHANNEL_GROWTH))
    expands = _expand_positions(depth, expand_layers, generator)
    widths, step = [d_in], 0
    for expand in expands:
        step += expand
        widths.append(round(d_in + (d_out - d_in) * step / expand_layers))
    paper = protocol == "paper"
    if paper:
        x = _paper_input(d_out, d_in, generator)
    else:
        size = math.ceil(math.sqrt(ROWS_PER_CHANNEL * d_out))
        x = torch.randn(size * size, d_in, generator=generator)
    h = x.expand(len(CHANNEL_NONLINEARITIES), *x.shape)
    for c_in, c_out, expand in zip(widths[:-1], widths[1:], expands, strict=True):
        z = _affine(h, c_out, generator, c_in, scale=1.0 / math.sqrt(c_in))
        if not paper:
            z = (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + 1e-5)
        fns = [STUDY_NONLINEARITIES[n] if expand else F.relu for n in CHANNEL_NONLINEARITIES]
        h = torch.stack([f(zg) for f, zg in zip(fns, z, strict=True)])
    if not paper:
        h = h[:, torch.randperm(h.shape[1], generator=generator)[: ROWS_PER_CHANNEL * d_out]]
    return numerical_rank(h, rtol).numpy() / d_out


def run_channel_study(
    networks: int | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: Callable[[int, int], None] | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    depths: Sequence[int] | None = None,
    d_out: tuple[int, int] | None = None,
    rtol: float | None = None,
) -> pd.DataFrame:
    """The channel-configuration study: rank of the final feature against the number of expand layers.

    For each depth ``L`` (``depths``, default ``CHANNEL_DEPTHS``) and each ``k`` from 1 to
    ``L``, ``networks`` random networks (see the module docstring) grow from
    ``d_out / CHANNEL_GROWTH`` to ``d_out`` channels in ``k`` equal steps at random layers.
    Returns one row per depth, ``k`` and nonlinearity after the expand layers with
    ``CHANNEL_COLUMNS``; ``progress(done, total)`` is called after each (depth, k) point.
    """
    _check_protocol(protocol)
    paper = protocol == "paper"
    networks = networks or (QUICK_NETWORKS if quick else STUDY_NETWORKS)
    if networks < 1:
        raise UserError(f"networks must be a positive integer, got {networks}")
    depths = list(depths or (QUICK_CHANNEL_DEPTHS if quick else CHANNEL_DEPTHS))
    if any(d < 1 for d in depths):
        raise UserError(f"depths must be positive integers, got {depths}")
    if d_out is None:
        d_out = (
            (PAPER_QUICK_D_OUT if quick else PAPER_D_OUT)
            if paper
            else (QUICK_D_OUT if quick else STUDY_D_OUT)
        )
    lo, hi = d_out
    _check_range(lo, hi)
    rtol = (PAPER_RTOL if paper else RTOL) if rtol is None else rtol
    if not 0.0 <= rtol < 1.0:
        raise UserError(f"rtol must be in [0, 1), got {rtol}")
    generator = torch.Generator().manual_seed(seed)
    cells = [(depth, k) for depth in depths for k in range(1, depth + 1)]
    with torch.no_grad(), _one_thread():
        stats = _averaged(
            cells,
            lambda depth, k: _channel_network(depth, k, lo, hi, protocol, rtol, generator),
            networks,
            progress,
        )
    records = [
        (depth, k, name, mean[j], std[j], networks)
        for (depth, k), mean, std in stats
        for j, name in enumerate(CHANNEL_NONLINEARITIES)
    ]
    df = pd.DataFrame.from_records(records, columns=list(CHANNEL_COLUMNS))
    df.attrs["settings"] = {
        "protocol": protocol,
        "networks": networks,
        "seed": seed,
        "quick": quick,
        "d_out": [lo, hi],
        "growth": CHANNEL_GROWTH,
        "rtol": rtol,
    }
    return df


# ---------------------------------------------------------------------- figures and files
_COLORS = dict(zip(STUDY_NONLINEARITIES, ["#444444", *qualitative.D3], strict=False))
# Distinct markers keep coinciding curves (ReLU, ReLU6, LeakyReLU) apart.
_SYMBOLS = dict(
    zip(
        STUDY_NONLINEARITIES,
        ["circle", "square", "x", "cross", "diamond", "triangle-up", "star", "circle"],
        strict=True,
    )
)


def _subtitle(settings: dict) -> str:
    if not settings:
        return ""
    protocol = settings["protocol"]
    return (
        f"<br><sup>protocol {protocol} ({PROTOCOLS[protocol]}); mean over {settings['networks']} random "
        f"networks per point; d_out uniform in {settings['d_out'][0]}..{settings['d_out'][1]}; "
        f"rtol {settings['rtol']:g}; seed {settings['seed']}</sup>"
    )


def rank_study_figure(df: pd.DataFrame) -> go.Figure:
    """One panel per block kind: rank ratio against dimension ratio, a line per nonlinearity."""
    kinds = [k for k in STUDY_BLOCKS if k in set(df["block"])]
    cols = 2 if len(kinds) > 1 else 1
    rows = math.ceil(len(kinds) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[STUDY_BLOCKS[k] for k in kinds],
        horizontal_spacing=0.08,
        vertical_spacing=0.12,
    )
    for i, kind in enumerate(kinds):
        row, col = i // cols + 1, i % cols + 1
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line={"color": "#bbbbbb", "dash": "dot", "width": 1},
                hoverinfo="skip",
                showlegend=False,
            ),
            row=row,
            col=col,
        )
        for name in STUDY_NONLINEARITIES:
            part = df[(df["block"] == kind) & (df["nonlinearity"] == name)].sort_values("dim_ratio")
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["dim_ratio"],
                    y=part["rank_ratio"],
                    customdata=np.stack([part["std"], part["networks"]], axis=1),
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=i == 0,
                    line={"color": _COLORS[name], "dash": "dash" if name == "linear" else "solid"},
                    marker={"symbol": _SYMBOLS[name], "size": 7},
                    hovertemplate=f"{name}<br>d_in/d_out %{{x:.1f}}<br>rank/d_out %{{y:.3f}}"
                    " ± %{customdata[0]:.3f}<br>%{customdata[1]} networks<extra></extra>",
                ),
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text="d_in / d_out", range=[0, 1.05], row=row, col=col)
        fig.update_yaxes(title_text="rank / d_out", range=[0, 1.05], row=row, col=col)
    fig.update_layout(
        title=f"Rank of the output feature of random blocks{_subtitle(df.attrs.get('settings', {}))}",
        height=430 * rows + 120,
        width=1100,
        template="plotly_white",
        legend={"title": {"text": "nonlinearity"}},
    )
    return fig


def channel_study_figure(df: pd.DataFrame) -> go.Figure:
    """One panel per depth: final rank ratio against the number of expand layers, a line per nonlinearity."""
    depths = sorted(set(df["depth"]))
    fig = make_subplots(
        rows=1,
        cols=len(depths),
        subplot_titles=[f"{d} layers" for d in depths],
        horizontal_spacing=0.05,
    )
    for i, depth in enumerate(depths):
        for name in CHANNEL_NONLINEARITIES:
            part = df[(df["depth"] == depth) & (df["nonlinearity"] == name)].sort_values("expand_layers")
            fig.add_trace(
                go.Scatter(
                    x=part["expand_layers"],
                    y=part["rank_ratio"],
                    customdata=np.stack([part["std"], part["networks"]], axis=1),
                    mode="lines+markers",
                    name=f"{name} after expand layers",
                    legendgroup=name,
                    showlegend=i == 0,
                    line={"color": _COLORS[name]},
                    marker={"symbol": _SYMBOLS[name], "size": 7},
                    hovertemplate=f"{name}<br>%{{x}} expand layers<br>rank/d_out %{{y:.3f}}"
                    " ± %{customdata[0]:.3f}<br>%{customdata[1]} networks<extra></extra>",
                ),
                row=1,
                col=i + 1,
            )
        fig.update_xaxes(title_text="expand layers", dtick=1 if depth <= 8 else 2, row=1, col=i + 1)
        fig.update_yaxes(title_text="final rank / d_out" if i == 0 else None, row=1, col=i + 1)
    settings = df.attrs.get("settings", {})
    fig.update_layout(
        title="Rank of the final feature of random networks against the number of expand layers"
        f"{_subtitle(settings)}",
        height=480,
        width=max(700, 320 * len(depths)),
        template="plotly_white",
    )
    return fig


STUDY_STEMS = {"blocks": "rank_study", "channels": "channel_study"}


def study_files(out_dir: str | Path, study: str, protocol: str) -> tuple[Path, Path]:
    """The CSV and HTML files a study (``blocks`` or ``channels``) under ``protocol`` writes."""
    stem = f"{STUDY_STEMS[study]}_{protocol}"
    out = Path(out_dir)
    return out / f"{stem}.csv", out / f"{stem}.html"


def check_out(out_dir: str | Path, study: str, protocol: str, force: bool = False) -> None:
    """Refuse, before a study is computed, an ``--out`` that is a file, or that holds this study's
    files already (an earlier study) unless ``force``; what is there that is not a plain file
    (a folder, a link) is refused even with ``force``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    for path in study_files(out, study, protocol):
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise UserError(f"--out {out} holds {path.name}, which is not a plain file; choose another --out")
        if path.exists() and not force:
            raise UserError(
                f"--out {out} already holds {path.name} (an earlier study); pass --force to replace it "
                "or choose another --out"
            )


def _write(
    df: pd.DataFrame, fig: go.Figure, paths: tuple[Path, Path], columns: Sequence[str], title: str
) -> tuple[Path, Path]:
    """Write both files in a fresh folder inside ``--out``, then rename each into place: a reader
    never sees half a file, and a link planted at either name is replaced, never followed."""
    import shutil
    import tempfile

    from rexsearch.report.html import html_page

    csv_path, html_path = paths
    out = csv_path.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".rank-study-", dir=out))
        try:
            df.to_csv(staging / csv_path.name, index=False, columns=list(columns), float_format="%.6g")
            figure = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
            note = f"Data: {csv_path.name} (one row per network) beside this page."
            page = html_page(title, figure + f"<p class='muted'>{note}</p>")
            (staging / html_path.name).write_text(page, encoding="utf-8")
            for path in paths:
                (staging / path.name).replace(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise UserError(f"cannot write the rank study to {out}: {exc.strerror or exc}") from None
    return csv_path, html_path


def write_rank_study(df: pd.DataFrame, out_dir: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``rank_study_<protocol>.csv`` and a self-contained ``.html`` into ``out_dir``
    (see :func:`check_out` for ``force``)."""
    protocol = df.attrs.get("settings", {}).get("protocol", DEFAULT_PROTOCOL)
    check_out(out_dir, "blocks", protocol, force)
    paths = study_files(out_dir, "blocks", protocol)
    title = f"rexsearch rank study: random blocks ({protocol} protocol)"
    return _write(df, rank_study_figure(df), paths, CSV_COLUMNS, title)


def write_channel_study(df: pd.DataFrame, out_dir: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``channel_study_<protocol>.csv`` and a self-contained ``.html`` into ``out_dir``
    (see :func:`check_out` for ``force``)."""
    protocol = df.attrs.get("settings", {}).get("protocol", DEFAULT_PROTOCOL)
    check_out(out_dir, "channels", protocol, force)
    paths = study_files(out_dir, "channels", protocol)
    title = f"rexsearch channel study: random networks ({protocol} protocol)"
    return _write(df, channel_study_figure(df), paths, CHANNEL_COLUMNS, title)
