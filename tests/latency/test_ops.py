"""A network's operators and segments: the keys a table is looked up by, their weights and
ONNX Runtime's layout conversions.
"""

from __future__ import annotations

import pytest
from support.latency import RES, draw_shapes

from rexsearch.latency import (
    ACT_CONTEXTS,
    config_ops,
    fold_batchnorm,
    op_weights,
    segment_conversions,
)


def test_ops_mirror_the_model(space):
    config = draw_shapes(space, 1)[1]
    ops = config_ops(config, RES)
    convs = [op for op in ops if op[0] == "conv"]
    assert convs[0] == ("conv", (3, config.stem_stride, RES), (3, config.stem_channels))
    assert sum(op[0] == "dw" for op in ops) == config.depth
    assert ops[-1] == ("classifier", (1, 10), (config.penultimate_channels,))


def test_activation_after_the_se_gate_is_its_own_context(space):
    config = next(c for c in draw_shapes(space, 2, seed=4) if any(b.se for b in c.blocks))
    ops = config_ops(config, RES)
    acts = [op for op in ops if op[0] == "act"]
    assert {op[1][2] for op in acts} == set(ACT_CONTEXTS)
    for i, op in enumerate(ops):  # "se" exactly where the activation follows the SE block
        if op[0] == "act":
            assert (op[1][2] == "se") == (ops[i - 1][0] == "se")


def test_operator_weights_are_the_folded_networks_parameters(space):
    from rexsearch.model import build_model

    for config in draw_shapes(space, 2, seed=8):
        folded = fold_batchnorm(build_model(config))
        assert sum(op_weights(op) for op in config_ops(config, RES)) == sum(
            p.numel() for p in folded.parameters()
        )


def _block_key(cin, cout, expansion, hw=8, se=None, exp_act="silu", dw_act="relu6", shortcut=False):
    return ("block", cin, cout, expansion, 3, 1, se, hw, exp_act, dw_act, shortcut)


def test_segment_conversions_follow_onnx_runtimes_layout_rules():
    hw2 = 8 * 8
    # the stem reads the plain image and writes blocked; an ELU needs the plain layout back
    assert segment_conversions(("stem", 32, 2, 16, "relu"), False, 4) == (0.0, True)
    assert segment_conversions(("stem", 32, 2, 16, "elu"), False, 4) == pytest.approx((16 * 256 / 1e6, False))
    # every width on the alignment, no SE, no partial shortcut: nothing converted
    assert segment_conversions(_block_key(16, 16, 6), True, 4) == (0.0, True)
    # widths off it run plain throughout: nothing converted either
    assert segment_conversions(_block_key(18, 22, 3), False, 4) == (0.0, False)
    # fewer than PLAIN_INPUT_BELOW inputs: the expand conv reads plain and writes blocked, so
    # the unaligned depthwise conv (13 x 6 = 78 channels) converts its input back
    assert segment_conversions(_block_key(13, 20, 6), False, 4) == pytest.approx((78 * hw2 / 1e6, False))
    # SE needs the plain layout, the projection after it the blocked one again
    moved, blocked = segment_conversions(_block_key(16, 16, 6, se=4), True, 4)
    assert (moved, blocked) == pytest.approx((2 * 96 * hw2 / 1e6, True))
    # a partial shortcut (input narrower than output) adds in the plain layout: the projection's
    # output and the block's input (blocked here) are both converted
    assert segment_conversions(_block_key(16, 24, 6, shortcut=True), True, 4) == pytest.approx(
        ((24 + 16) * hw2 / 1e6, False)
    )
    # a blocked input into a dense convolution that runs plain is converted back
    assert segment_conversions(_block_key(18, 22, 3), True, 4) == pytest.approx((18 * hw2 / 1e6, False))
    # an identity add of a plain input and a blocked projection converts one side: plain after
    assert segment_conversions(_block_key(16, 16, 6, shortcut=True), False, 4) == pytest.approx(
        (2 * 16 * hw2 / 1e6, False)
    )
    # an identity shortcut keeps the blocked layout; so does an activation other than ELU,
    # softplus or mish
    assert segment_conversions(_block_key(16, 16, 6, shortcut=True, dw_act="hardswish"), True, 4) == (
        0.0,
        True,
    )
    assert segment_conversions(_block_key(16, 16, 6, dw_act="softplus"), True, 4)[0] > 0
    # the layout a segment leaves is what the next one starts from
    assert segment_conversions(_block_key(16, 16, 6), False, 4) == pytest.approx((16 * hw2 / 1e6, True))
