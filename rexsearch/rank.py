"""Feature-rank measurement (the ReXNet paper's random-network studies are in ``rank_study``).

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

**Protocols.** ``protocol="batchnorm"`` (the default) is the measurement above: Gaussian
images, BatchNorm on batch statistics, ``rtol = RTOL``. ``protocol="paper"`` transfers the
setting of the paper's Figure 1 (see :mod:`rexsearch.rank_study`) to a whole network:
U[0, 1) images, the network in eval mode (a freshly initialised BatchNorm, with running
statistics 0 and 1, is then the identity; a trained one uses its running statistics),
and the strict numerical rank (``rtol = 0``): the random-block study's earlier setting
(that study now draws half-normal inputs at a fixed tolerance). ``benchmarks/bench_rank_protocols.py``
measures which of the two correlates better with proxy accuracy; the default follows it.

The paper's random-network studies live in :mod:`rexsearch.rank_study`, so that trial
workers importing this module load neither pandas nor plotly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rexsearch.config import ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.model import ReXNet, build_model
from rexsearch.proxy import PROXY_RESOLUTION
from rexsearch.results import DEFAULT_RANK_PROTOCOL, RANK_PROTOCOLS

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
    protocol: str = DEFAULT_RANK_PROTOCOL

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
            "protocol": self.protocol,
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
def _forward_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Train mode (BN normalises by batch statistics) or eval mode, without changing the model's state."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train(train)
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
    resolution: int = PROXY_RESOLUTION,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    inputs: torch.Tensor | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    rtol: float | None = None,
    protocol: str = DEFAULT_RANK_PROTOCOL,
) -> RankResult:
    """Per-layer normalized feature rank and the rank objective of a network.

    A config is built into a fresh network initialised from ``seed``; a model is measured
    as it is and left unchanged. ``inputs`` (real images) replaces the ``samples``
    random images of ``resolution`` x ``resolution`` (Gaussian for the ``batchnorm``
    protocol, U[0, 1) for ``paper``). ``rtol`` defaults to the protocol's (``RTOL``, or 0
    for ``paper``). See the module docstring.
    """
    if protocol not in RANK_PROTOCOLS:
        raise UserError(f"unknown rank protocol {protocol!r}; known: {', '.join(RANK_PROTOCOLS)}")
    paper = protocol == "paper"
    if rtol is None:
        rtol = 0.0 if paper else RTOL
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
        draw = torch.rand if paper else torch.randn
        inputs = draw(samples, 3, resolution, resolution, generator=generator)
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
        with torch.no_grad(), _forward_mode(model, train=not paper):
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
        protocol=protocol,
    )
