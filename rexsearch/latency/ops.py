"""What a network is made of, operator by operator: the keys a latency table is looked up by.

:func:`config_segments` splits a config into its stem, its blocks and its head, each under a
key that determines its operators (:data:`Op`: the operator, its family key and its channel
coordinates), mirroring :mod:`rexsearch.model` with BatchNorm folded. :func:`op_weights`
counts the weights an operator reads, and :func:`segment_conversions` the tensor elements
ONNX Runtime converts between its blocked and its plain layout, which no operator timed alone
shows. Nothing here measures: this module is what the table, the correction and the build
agree on (docs/architecture.md, "Latency tables").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rexsearch.config import BlockConfig, ReXNetConfig


def output_size(hw: int, k: int, stride: int) -> int:
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
        _act(ops, config.activation, config.stem_channels, output_size(hw, 3, config.stem_stride))
        return ops

    out.append((("stem", resolution, config.stem_stride, config.stem_channels, config.activation), stem))
    hw = output_size(resolution, 3, config.stem_stride)
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
            out_hw = output_size(hw, b.kernel, b.stride)
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
        hw = output_size(hw, b.kernel, b.stride)
    last, pen = config.blocks[-1].out_channels, config.penultimate_channels

    def head(hw: int = hw) -> list[Op]:
        ops: list[Op] = [("conv", (1, 1, hw), (last, pen))]
        _act(ops, config.activation, pen, hw)
        ops.append(("classifier", (hw, config.num_classes), (pen,)))
        return ops

    out.append((("head", hw, last, pen, config.activation, config.num_classes), head))
    return out


#: Operator kinds the correction weighs separately, in the order of
#: :meth:`~rexsearch.latency.LatencyTable.components` (which then gives the operator count,
#: the millions of weights and the millions of converted elements, at these indices).
KINDS = ("conv", "dw", "act", "se", "add", "classifier")
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
COUNT_INDEX, WEIGHTS_INDEX, CONVERSIONS_INDEX = len(KINDS), len(KINDS) + 1, len(KINDS) + 2


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


#: The last element of the key of a family measured on input channels on the runtime's
#: blocked alignment (:func:`~rexsearch.latency.build.table_families`), and the operators
#: that have such families.
BLOCKED = "blocked"
SPLIT_OPS = ("conv", "dw")
#: Activations ONNX Runtime on the CPU runs only in the plain layout: a tensor in the blocked
#: one is converted back before them (ELU and softplus, as the runtime's profiles show; mish
#: is softplus, tanh and a product). The others are fused into the convolution before them or
#: run on blocked tensors.
PLAIN_ACTIVATIONS = frozenset({"elu", "softplus", "mish"})
#: A dense convolution with fewer input channels than this reads the plain layout and writes
#: the blocked one: the runtime's channel block (16 with AVX-512). A table probes it on its
#: machine (:func:`~rexsearch.latency.device.probe_plain_input_below`); this stands in where
#: none was.
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

    The rules, read off the runtime's profiles of whole networks: a depthwise convolution runs
    blocked when its channels are on the blocked ``alignment``, a dense one also when it has
    fewer than ``below`` inputs (it then reads the plain layout; :data:`PLAIN_INPUT_BELOW`), and
    a dense one that runs plain converts a blocked input; an SE block and the activations of
    :data:`PLAIN_ACTIVATIONS` need the plain layout; a partial shortcut adds in it (converting a
    blocked input and a blocked projection), an identity add of two layouts converts one side;
    everything else keeps the layout it is given. Each change of layout converts the tensor at
    that point once. A table of single operators does not see these conversions; the correction
    weighs the count (reports/latency/measurements.md has what they cost).
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
        out_hw = output_size(hw, kernel, stride)
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
        hw = output_size(resolution, 3, stride)
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
