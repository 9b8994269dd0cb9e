"""Feature-rank measurement, and the ReXNet paper's random-network rank study.

**What is measured.** :func:`measure_rank` runs a batch through a network and, with forward
hooks, takes the features after every expand layer: the expanded activation of each block
(``blocks.N.conv_exp``, absent when the block's expansion is 1), each block's output
(``blocks.N``, after the shortcut) and the penultimate layer (``head``). A feature map
``(N, C, H, W)`` becomes an ``N·H·W x C`` matrix whose rows are subsampled (seeded) to at
most ``min(max_rows, ROWS_PER_CHANNEL·C)``. The inputs are random Gaussian images by
default (data-free) or a batch of real images.

**Rank.** ``rank = #{σᵢ > σ_max · max(rtol, max(M, C)·ε)}`` for an ``M x C`` matrix, with
``ε`` the float32 machine epsilon. With ``rtol = 0`` this is the numerical rank of
``numpy.linalg.matrix_rank`` / ``torch.linalg.matrix_rank`` for float32 features (the
features are computed in float32, so a float64 epsilon would count rounding noise as
rank). That strict rank is uninformative here: a nonlinearity makes ``f(WX)`` full rank
in exact arithmetic for every ratio ``d_in / d_out``, and so every ReLU or SiLU layer
measures 1.0. What the paper's findings are about is how many directions carry a
non-negligible share of the feature: the default ``rtol = RTOL = 0.03`` counts the
directions whose singular value is at least 3% of the largest one (energy at least
about 0.1% of the top direction's). ``reports/rank-study/`` shows both settings.
Features are not centred: this is the rank of ``f(WX)`` itself, as in the paper. A
feature with a large mean (ReLU, softplus) has a large ``σ_max``, and ``σ_max`` grows with
``sqrt(C)`` against the other singular values, so at a relative tolerance such layers and
very wide layers count fewer directions. The singular values come from the eigenvalues of
the ``C x C`` Gram matrix computed in float64 (``σᵢ² = λᵢ``): accurate to about
``C · 1e-16 · λ_max``, far below the squared threshold (``9e-4 · λ_max`` by default,
``(max(M, C)·ε)² · λ_max ≈ 6e-8 · λ_max`` at ``rtol = 0`` and ``M = 2000``), so the
count equals an SVD's at a fraction of its cost.
Sampling matters at a relative tolerance: an ``M x C`` Gaussian matrix has
``σ_min / σ_max ≈ (√M - √C) / (√M + √C)``, 0.17 at ``M = 2C`` (well above 0.03) but 0 at
``M = C``. A layer is therefore measured on ``ROWS_PER_CHANNEL·C`` rows when it has them.
The **normalized rank** is ``rank / min(C, M)``, which is ``rank / C`` whenever the layer
has at least ``C`` rows; ``LayerRank.rows`` says how many it had (the widest layers of
the last stage of a 32x32 CIFAR proxy have ``4·samples`` rows).

**The objective.** :attr:`RankResult.rank` is the mean normalized rank over the expand
layers, the hooked layers whose output is wider than their input: every expansion conv,
the output of every block with ``out_channels > in_channels``, and the head when it
widens. (The block outputs alone would make a flat objective: the projection from the
``expansion·in_channels`` hidden features plus the partial shortcut keeps them at 1.0
unless a block widens more than ``expansion + 1`` times; ``LayerRank.in_objective``
marks the averaged layers. A network without expand layers scores 1.0.)

**Nuclear norm.** The CVPR version's rank surrogate: the nuclear norm of the final pooled
feature ``P`` (``N x C_penultimate``, global average of the head's output), normalized as
``‖P‖_* / (‖P‖_F · sqrt(min(N, C)))``: scale-free, in ``(0, 1]``, 1 when all singular
values are equal and ``1/sqrt(min(N, C))`` for a rank-one feature. ``P`` is not centred.

**BatchNorm.** A freshly initialised network has running statistics 0 and 1, so in eval
mode its BatchNorm layers would not normalise at all and the features would be scaled
arbitrarily layer after layer. The forward therefore runs in train mode, where every BN
normalises by the statistics of the batch (the paper's setting: BN before the
nonlinearity), under ``torch.no_grad``; the running statistics and every module's
train/eval flag are saved before and restored after, so measuring never changes a model.
A trained model is measured the same way; pass real images as ``inputs`` for it.
The network (when built from a config), the inputs and the row subsampling all come
from ``seed``: the same seed gives the same result.

**The rank study** (:func:`run_rank_study`) reproduces the paper's study of random
single-block networks; see its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from torch import nn

from rexsearch.config import ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.model import ReXNet, build_model

#: Machine epsilon of the features' dtype: the floor of the rank tolerance.
FEATURE_EPS = float(torch.finfo(torch.float32).eps)
#: Default relative tolerance: count singular values above 3% of the largest.
RTOL = 0.03
#: Rows used per channel when a layer has them (see the module docstring).
ROWS_PER_CHANNEL = 2
DEFAULT_SAMPLES = 256
DEFAULT_MAX_ROWS = 4096


@dataclass(frozen=True)
class LayerRank:
    """Rank of one layer's ``rows x out_channels`` feature matrix.

    ``in_objective``: the layer is an expand layer, averaged into :attr:`RankResult.rank`.
    """

    name: str
    in_channels: int
    out_channels: int
    rank: int
    normalized: float
    rows: int
    in_objective: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "rank": self.rank,
            "normalized": self.normalized,
            "rows": self.rows,
            "in_objective": self.in_objective,
        }


@dataclass(frozen=True)
class RankResult:
    """The rank objective, the per-layer ranks and the nuclear-norm surrogate of one network."""

    rank: float
    per_layer: tuple[LayerRank, ...]
    nuclear_norm: float
    samples: int
    resolution: int
    rtol: float = RTOL

    @property
    def objective_layers(self) -> tuple[LayerRank, ...]:
        """The expand layers that :attr:`rank` averages."""
        return tuple(layer for layer in self.per_layer if layer.in_objective)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "nuclear_norm": self.nuclear_norm,
            "samples": self.samples,
            "resolution": self.resolution,
            "rtol": self.rtol,
            "per_layer": [layer.to_dict() for layer in self.per_layer],
        }


# ---------------------------------------------------------------------- linear algebra
def gram_eigenvalues(features: torch.Tensor) -> torch.Tensor:
    """Ascending float64 eigenvalues of the Gram matrix of ``(..., M, C)`` features.

    The smaller of ``XᵀX`` and ``XXᵀ`` is used; its eigenvalues are the squared singular
    values of ``X``.
    """
    x = features.detach().double().numpy()
    m, c = x.shape[-2:]
    xt = np.swapaxes(x, -1, -2)
    gram = xt @ x if m >= c else x @ xt  # numpy computes XᵀX of one array with a symmetric rank-k update
    return torch.from_numpy(np.linalg.eigvalsh(gram))


def numerical_rank(features: torch.Tensor, rtol: float = RTOL) -> torch.Tensor:
    """Rank of each ``M x C`` matrix in ``(..., M, C)`` features, as an int64 tensor.

    ``#{σᵢ > σ_max · max(rtol, max(M, C)·FEATURE_EPS)}`` (see the module docstring).
    """
    m, c = features.shape[-2:]
    eig = gram_eigenvalues(features)
    threshold = eig[..., -1:].clamp(min=0) * max(rtol, max(m, c) * FEATURE_EPS) ** 2
    return ((eig > threshold) & (eig > 0)).sum(-1)


def normalized_nuclear_norm(features: torch.Tensor) -> float:
    """``‖X‖_* / (‖X‖_F · sqrt(min(M, C)))`` of an ``M x C`` matrix; 0 for a zero matrix."""
    sigma = gram_eigenvalues(features).clamp(min=0).sqrt()
    frobenius = float(sigma.square().sum().sqrt())
    if frobenius == 0.0:
        return 0.0
    return float(sigma.sum()) / (frobenius * math.sqrt(min(features.shape[-2:])))


def _row_sample(rows: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """At most ``keep`` rows of a matrix, chosen at random without replacement."""
    if keep >= rows.shape[0]:
        return rows
    return rows[torch.randperm(rows.shape[0], generator=generator)[:keep]]


# ---------------------------------------------------------------------- measure_rank
@dataclass(frozen=True)
class _Tap:
    name: str
    module: nn.Module
    in_channels: int
    out_channels: int


def _taps(model: ReXNet) -> list[_Tap]:
    """The hooked layers, in forward order."""
    config = model.config
    taps = []
    for i, (module, block) in enumerate(zip(model.blocks, config.blocks, strict=True)):
        if block.has_expand:
            taps.append(_Tap(f"blocks.{i}.conv_exp", module.conv_exp, block.in_channels, block.dw_channels))
        taps.append(_Tap(f"blocks.{i}", module, block.in_channels, block.out_channels))
    taps.append(_Tap("head", model.head, config.blocks[-1].out_channels, config.penultimate_channels))
    return taps


@contextmanager
def _batch_statistics(model: nn.Module) -> Iterator[None]:
    """Train mode (BN normalises by batch statistics) without changing the model's state."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for m, mode in modes:
            m.train(mode)


def _check_inputs(inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise UserError("inputs must be a float tensor of images (N, 3, R, R)")
    if inputs.dim() != 4 or inputs.shape[1] != 3 or inputs.shape[2] != inputs.shape[3]:
        raise UserError(f"inputs must have shape (N, 3, R, R), got {tuple(inputs.shape)}")
    if inputs.shape[0] < 2:
        raise UserError("inputs must hold at least 2 images (BatchNorm uses batch statistics)")


def measure_rank(
    config_or_model: ReXNetConfig | ReXNet,
    *,
    resolution: int = 32,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    inputs: torch.Tensor | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    rtol: float = RTOL,
) -> RankResult:
    """Per-layer normalized feature rank and the rank objective of a network.

    A config is built into a fresh network initialised from ``seed``; a model is measured
    as it is and left unchanged. ``inputs`` (real images) replaces the ``samples``
    Gaussian images of ``resolution`` x ``resolution``. See the module docstring.
    """
    if inputs is None:
        if resolution < 1:
            raise UserError(f"resolution must be a positive integer, got {resolution}")
        if samples < 2:
            raise UserError(f"samples must be at least 2 (BatchNorm uses batch statistics), got {samples}")
    else:
        _check_inputs(inputs)
        samples, resolution = inputs.shape[0], inputs.shape[-1]
    if max_rows < 1:
        raise UserError(f"max_rows must be a positive integer, got {max_rows}")
    if not 0.0 <= rtol < 1.0:
        raise UserError(f"rtol must be in [0, 1), got {rtol}")
    generator = torch.Generator().manual_seed(seed)
    if isinstance(config_or_model, ReXNetConfig):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(config_or_model)
    elif isinstance(config_or_model, ReXNet):
        model = config_or_model
    else:
        raise TypeError(f"expected a ReXNetConfig or a ReXNet, got {type(config_or_model).__name__}")
    param = next(model.parameters())
    if inputs is None:
        inputs = torch.randn(samples, 3, resolution, resolution, generator=generator)
    inputs = inputs.to(param.device, param.dtype).contiguous(memory_format=torch.channels_last)

    taps = _taps(model)
    rows: dict[str, torch.Tensor] = {}

    def hook_for(tap: _Tap) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            flat = output.detach().permute(0, 2, 3, 1).reshape(-1, tap.out_channels)
            keep = min(max_rows, ROWS_PER_CHANNEL * tap.out_channels)
            rows[tap.name] = _row_sample(flat, keep, generator).to("cpu", copy=True)

        return hook

    handles = [tap.module.register_forward_hook(hook_for(tap)) for tap in taps]
    try:
        with torch.no_grad(), _batch_statistics(model):
            features = model.forward_features(inputs)
    finally:
        for handle in handles:
            handle.remove()

    per_layer = []
    for tap in taps:
        matrix = rows[tap.name]
        r = int(numerical_rank(matrix, rtol))
        per_layer.append(
            LayerRank(
                name=tap.name,
                in_channels=tap.in_channels,
                out_channels=tap.out_channels,
                rank=r,
                normalized=r / min(matrix.shape),
                rows=matrix.shape[0],
                in_objective=tap.out_channels > tap.in_channels,
            )
        )
    objective = [layer.normalized for layer in per_layer if layer.in_objective]
    return RankResult(
        rank=float(np.mean(objective)) if objective else 1.0,
        per_layer=tuple(per_layer),
        nuclear_norm=normalized_nuclear_norm(features.mean((2, 3)).cpu()),
        samples=samples,
        resolution=resolution,
        rtol=rtol,
    )


# ---------------------------------------------------------------------- the rank study
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
#: Inverted-bottleneck expansion (ReXNet's and MobileNetV2's t).
STUDY_EXPANSION = 6
#: d_out range of the full study and of ``quick`` (inclusive).
STUDY_D_OUT = (64, 256)
QUICK_D_OUT = (16, 32)
#: Networks per point (the paper: 1,000): about 13 minutes on 2 idle CPU cores. The cost is
#: dominated by the inverted bottleneck with a full 3x3 conv, which grows as d_out³.
STUDY_NETWORKS = 300
QUICK_NETWORKS = 4
CSV_COLUMNS = ("block", "nonlinearity", "dim_ratio", "rank_ratio", "std", "networks")


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


def _study_block(kind: str, x: torch.Tensor, d_out: int, generator: torch.Generator) -> torch.Tensor:
    """Outputs ``(G, B, d_out, H, W)`` of one random block for every study nonlinearity."""
    d_in = x.shape[1]

    def weight(c_out: int, c_in: int, k: int) -> torch.Tensor:
        return torch.randn(c_out, c_in, k, k, generator=generator) / math.sqrt(c_in * k * k)

    if kind in ("conv1x1", "conv3x3"):
        k = 1 if kind == "conv1x1" else 3
        z = _standardize(F.conv2d(x, weight(d_out, d_in, k), padding=k // 2).unsqueeze(0))[0]
        return _apply_each(z, shared=True)
    hidden = STUDY_EXPANSION * d_in
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


def run_rank_study(
    networks: int | None = None,
    seed: int = 0,
    quick: bool = False,
    progress: Callable[[int, int], None] | None = None,
    rtol: float = RTOL,
    d_out: tuple[int, int] | None = None,
    blocks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The paper's random-network rank study: rank(block output) / d_out against d_in / d_out.

    For each block kind (``blocks``, default all of ``STUDY_BLOCKS``), dimension ratio and
    network: ``d_out`` is drawn uniformly from the inclusive range ``d_out`` (default
    ``STUDY_D_OUT``, ``QUICK_D_OUT`` with ``quick``), ``d_in = max(1, round(ratio·d_out))``,
    the input is one ``S x S`` Gaussian image with ``d_in`` channels (``S = ⌈√(2·d_out)⌉``)
    and the weights are Gaussian. Every conv is followed by train-mode BN; the nonlinearity
    comes after BN (in an inverted bottleneck after both the expansion and the 3x3 conv;
    expansion ``STUDY_EXPANSION``, linear projection, the input added to the first
    ``d_in`` output channels). The same network and input serve all eight nonlinearities.
    The output's rank is measured on ``ROWS_PER_CHANNEL·d_out`` of its ``S²`` rows with
    :func:`numerical_rank` at ``rtol``. ``progress(done, total)`` is called after each
    (block kind, ratio) point. Returns one row per block kind, nonlinearity and ratio with
    ``CSV_COLUMNS`` (``std``: standard deviation across networks).
    """
    networks = networks or (QUICK_NETWORKS if quick else STUDY_NETWORKS)
    if networks < 1:
        raise UserError(f"networks must be a positive integer, got {networks}")
    lo, hi = d_out or (QUICK_D_OUT if quick else STUDY_D_OUT)
    if not 1 <= lo <= hi:
        raise UserError(f"d_out must be a range lo..hi with 1 <= lo <= hi, got {lo}..{hi}")
    kinds = list(blocks or STUDY_BLOCKS)
    unknown = [k for k in kinds if k not in STUDY_BLOCKS]
    if unknown:
        raise UserError(f"unknown block kind {unknown[0]!r}; known: {', '.join(STUDY_BLOCKS)}")
    generator = torch.Generator().manual_seed(seed)
    records = []
    total, done = len(kinds) * len(DIM_RATIOS), 0
    with torch.no_grad():
        for kind in kinds:
            for ratio in DIM_RATIOS:
                ratios = np.empty((networks, len(STUDY_NONLINEARITIES)))
                for n in range(networks):
                    d_out = int(torch.randint(lo, hi + 1, (1,), generator=generator))
                    d_in = max(1, round(ratio * d_out))
                    size = math.ceil(math.sqrt(ROWS_PER_CHANNEL * d_out))
                    x = torch.randn(1, d_in, size, size, generator=generator)
                    out = _study_block(kind, x, d_out, generator)
                    flat = out.permute(0, 1, 3, 4, 2).reshape(out.shape[0], -1, d_out)
                    keep = torch.randperm(flat.shape[1], generator=generator)[: ROWS_PER_CHANNEL * d_out]
                    ratios[n] = numerical_rank(flat[:, keep], rtol).numpy() / d_out
                std = ratios.std(0, ddof=1) if networks > 1 else np.zeros(len(STUDY_NONLINEARITIES))
                for j, name in enumerate(STUDY_NONLINEARITIES):
                    records.append((kind, name, ratio, float(ratios[:, j].mean()), float(std[j]), networks))
                done += 1
                if progress is not None:
                    progress(done, total)
    df = pd.DataFrame.from_records(records, columns=list(CSV_COLUMNS))
    df.attrs["settings"] = {
        "networks": networks,
        "seed": seed,
        "quick": quick,
        "d_out": [lo, hi],
        "rows_per_channel": ROWS_PER_CHANNEL,
        "expansion": STUDY_EXPANSION,
        "rtol": rtol,
    }
    return df


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
    colors = dict(zip(STUDY_NONLINEARITIES, ["#444444", *qualitative.D3], strict=False))
    # Distinct markers keep coinciding curves (ReLU, ReLU6, LeakyReLU) apart.
    symbols = dict(
        zip(
            STUDY_NONLINEARITIES,
            ["circle", "square", "x", "cross", "diamond", "triangle-up", "star", "circle"],
            strict=True,
        )
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
                    line={"color": colors[name], "dash": "dash" if name == "linear" else "solid"},
                    marker={"symbol": symbols[name], "size": 7},
                    hovertemplate=f"{name}<br>d_in/d_out %{{x:.1f}}<br>rank/d_out %{{y:.3f}}"
                    " ± %{customdata[0]:.3f}<br>%{customdata[1]} networks<extra></extra>",
                ),
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text="d_in / d_out", range=[0, 1.05], row=row, col=col)
        fig.update_yaxes(title_text="rank / d_out", range=[0, 1.05], row=row, col=col)
    settings = df.attrs.get("settings", {})
    subtitle = ""
    if settings:
        subtitle = (
            f"<br><sup>mean over {settings['networks']} random networks per point; d_out uniform in "
            f"{settings['d_out'][0]}..{settings['d_out'][1]}; BN before the nonlinearity; "
            f"rank at rtol {settings['rtol']:g}; seed {settings['seed']}</sup>"
        )
    fig.update_layout(
        title=f"Rank of the output feature of random blocks{subtitle}",
        height=430 * rows + 120,
        width=1100,
        template="plotly_white",
        legend={"title": {"text": "nonlinearity"}},
    )
    return fig


def write_rank_study(df: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``rank_study.csv`` and a self-contained ``rank_study.html`` into ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        csv_path, html_path = out / "rank_study.csv", out / "rank_study.html"
        df.to_csv(csv_path, index=False, columns=list(CSV_COLUMNS), float_format="%.6g")
        rank_study_figure(df).write_html(html_path, include_plotlyjs=True, full_html=True)
    except OSError as exc:
        raise UserError(f"cannot write the rank study to {out}: {exc.strerror or exc}") from None
    return csv_path, html_path
