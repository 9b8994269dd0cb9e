"""State-dict layouts: rexsearch's own, the reference implementation's and timm's.

``to_layout`` and ``from_layout`` rename (and, for the reference's 1x1-conv classifier,
reshape) tensors between layouts. Both are strict: a missing, extra or mis-shaped key
raises :class:`~rexsearch.errors.LayoutError` naming it.

* ``rexsearch``: ``stem.conv``, ``blocks.N.conv_exp.conv``, ``blocks.N.se.fc1``, ``head.conv``,
  ``classifier`` (the module names of :mod:`rexsearch.model`).
* ``official`` (clovaai/rexnet ``ReXNetV1``): ``features.0`` stem conv, ``features.N+3.out.J``
  blocks (sequential indices), ``features.D+3`` penultimate conv, ``output.1`` conv classifier.
* ``timm`` (``rexnet_100`` etc.): ``stem.conv``, ``features.N.conv_exp.conv``,
  ``features.D`` penultimate, ``head.fc`` linear classifier.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch

from rexsearch.config import ReXNetConfig
from rexsearch.errors import LayoutError

LAYOUTS = ("rexsearch", "official", "timm")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_bn(ours: str, conv: str, bn: str) -> list[tuple[str, str]]:
    return [(f"{ours}.conv.weight", f"{conv}.weight")] + [(f"{ours}.bn.{p}", f"{bn}.{p}") for p in _BN]


def key_map(config: ReXNetConfig, layout: str) -> list[tuple[str, str]]:
    """Ordered (rexsearch key, layout key) pairs for every tensor of ``config``'s model."""
    if layout not in LAYOUTS:
        raise LayoutError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    pairs: list[tuple[str, str]] = []
    depth = config.depth
    if layout == "rexsearch":
        from rexsearch.model import build_model

        with torch.device("meta"):
            keys = list(build_model(config).state_dict())
        return [(k, k) for k in keys]
    if layout == "timm":
        pairs += _conv_bn("stem", "stem.conv", "stem.bn")
        for i, b in enumerate(config.blocks):
            ours, theirs = f"blocks.{i}", f"features.{i}"
            parts = (["conv_exp"] if b.has_expand else []) + ["conv_dw"]
            for part in parts:
                pairs += _conv_bn(f"{ours}.{part}", f"{theirs}.{part}.conv", f"{theirs}.{part}.bn")
            if b.se:
                pairs += [
                    (f"{ours}.se.fc1.weight", f"{theirs}.se.fc1.weight"),
                    (f"{ours}.se.fc1.bias", f"{theirs}.se.fc1.bias"),
                ]
                pairs += [(f"{ours}.se.bn.{p}", f"{theirs}.se.bn.{p}") for p in _BN]
                pairs += [
                    (f"{ours}.se.fc2.weight", f"{theirs}.se.fc2.weight"),
                    (f"{ours}.se.fc2.bias", f"{theirs}.se.fc2.bias"),
                ]
            pairs += _conv_bn(f"{ours}.conv_pwl", f"{theirs}.conv_pwl.conv", f"{theirs}.conv_pwl.bn")
        pairs += _conv_bn("head", f"features.{depth}.conv", f"features.{depth}.bn")
        pairs += [("classifier.weight", "head.fc.weight"), ("classifier.bias", "head.fc.bias")]
        return pairs
    # official: nn.Sequential indices, activations take an index but hold no tensors
    pairs += _conv_bn("stem", "features.0", "features.1")
    for i, b in enumerate(config.blocks):
        ours, theirs = f"blocks.{i}", f"features.{i + 3}.out"
        j = 0
        if b.has_expand:
            pairs += _conv_bn(f"{ours}.conv_exp", f"{theirs}.{j}", f"{theirs}.{j + 1}")
            j += 3  # conv, bn, silu
        pairs += _conv_bn(f"{ours}.conv_dw", f"{theirs}.{j}", f"{theirs}.{j + 1}")
        j += 2
        if b.se:
            se = f"{theirs}.{j}.fc"
            pairs += [(f"{ours}.se.fc1.weight", f"{se}.0.weight"), (f"{ours}.se.fc1.bias", f"{se}.0.bias")]
            pairs += [(f"{ours}.se.bn.{p}", f"{se}.1.{p}") for p in _BN]
            pairs += [(f"{ours}.se.fc2.weight", f"{se}.3.weight"), (f"{ours}.se.fc2.bias", f"{se}.3.bias")]
            j += 1
        j += 1  # relu6
        pairs += _conv_bn(f"{ours}.conv_pwl", f"{theirs}.{j}", f"{theirs}.{j + 1}")
    pairs += _conv_bn("head", f"features.{depth + 3}", f"features.{depth + 4}")
    pairs += [("classifier.weight", "output.1.weight"), ("classifier.bias", "output.1.bias")]
    return pairs


def _classifier_key(layout: str) -> str:
    return {"official": "output.1.weight", "timm": "head.fc.weight"}.get(layout, "classifier.weight")


def expected_shapes(config: ReXNetConfig, layout: str = "rexsearch") -> OrderedDict[str, tuple[int, ...]]:
    """The ordered key -> shape table of ``config``'s model in ``layout``."""
    from rexsearch.model import build_model

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    out: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    for mine, theirs in key_map(config, layout):
        shape = ours[mine]
        if layout == "official" and theirs == "output.1.weight":
            shape = (*shape, 1, 1)
        out[theirs] = shape
    return out


def _check_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], layout: str
) -> None:
    missing = [k for k in expected if k not in state]
    if missing:
        raise LayoutError(
            f"{layout} state_dict is missing key {missing[0]!r} ({len(missing)} missing in all)"
        )
    extra = [k for k in state if k not in expected]
    if extra:
        raise LayoutError(
            f"{layout} state_dict has unexpected key {extra[0]!r} ({len(extra)} unexpected in all)"
        )
    for key, shape in expected.items():
        got = tuple(state[key].shape)
        if got != shape:
            raise LayoutError(
                f"{layout} state_dict key {key!r} has shape {list(got)}, expected {list(shape)}"
            )


def to_layout(
    state: Mapping[str, torch.Tensor], config: ReXNetConfig, layout: str
) -> OrderedDict[str, torch.Tensor]:
    """Convert a rexsearch state_dict of ``config`` into ``layout`` (strict)."""
    _check_keys(state, expected_shapes(config, "rexsearch"), "rexsearch")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for mine, theirs in key_map(config, layout):
        tensor = state[mine]
        if layout == "official" and theirs == _classifier_key(layout):
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[theirs] = tensor
    return out


def from_layout(
    state: Mapping[str, torch.Tensor], config: ReXNetConfig, layout: str
) -> OrderedDict[str, torch.Tensor]:
    """Convert a ``layout`` state_dict of ``config`` into rexsearch's layout (strict)."""
    _check_keys(state, expected_shapes(config, layout), layout)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for mine, theirs in key_map(config, layout):
        tensor = state[theirs]
        if layout == "official" and theirs == _classifier_key(layout):
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        out[mine] = tensor
    return out
