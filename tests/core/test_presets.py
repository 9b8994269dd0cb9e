import json
from pathlib import Path

import pytest
import torch

from rexsearch import build_model, count_cost, get_preset
from rexsearch.errors import UserError
from rexsearch.principles import (
    PRESETS,
    expand_layers_schedule,
    linear_schedule,
    make_divisible,
    stagewise_schedule,
)

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
BLOCKS_1_0 = {
    "stem_out": 32,
    "outs": [16, 27, 38, 50, 61, 72, 84, 95, 106, 117, 128, 140, 151, 162, 174, 185],
    "se_from": 3,
    "strides": [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1],
    "shortcut": [
        False,
        False,
        True,
        False,
        True,
        False,
        True,
        True,
        True,
        True,
        True,
        False,
        True,
        True,
        True,
        True,
    ],
}


def test_rexnet_1_0_block_table_matches_reference():
    cfg = get_preset("rexnet-1.0")
    assert cfg.stem_channels == 32 and cfg.penultimate_channels == 1280
    assert cfg.out_channels == BLOCKS_1_0["outs"]
    assert [b.stride for b in cfg.blocks] == BLOCKS_1_0["strides"]
    assert [b.se for b in cfg.blocks] == [i >= 3 for i in range(16)]
    assert [b.expansion for b in cfg.blocks] == [1] + [6] * 15
    assert [cfg.uses_shortcut(b) for b in cfg.blocks] == BLOCKS_1_0["shortcut"]
    assert [b.dw_channels // cfg.se_ratio for b in cfg.blocks][3] == 19
    table = json.loads((REFERENCE / "rexnet-1.0.blocks.json").read_text())["blocks"]
    for b, r in zip(cfg.blocks, table, strict=True):
        assert (b.in_channels, b.out_channels, b.expansion, b.dw_channels, b.stride, b.kernel) == (
            r["in_channels"],
            r["out_channels"],
            r["t"],
            r["dw_channels"],
            r["stride"],
            r["kernel"],
        )
        assert b.se == r["use_se"] and cfg.uses_shortcut(b) == r["use_shortcut"]
        assert (b.dw_channels // cfg.se_ratio if b.se else None) == r["se_mid"]


def test_rexnet_1_0_cost_matches_reference():
    cost = count_cost(get_preset("rexnet-1.0"))
    assert (cost.params, cost.macs, cost.fvcore_total) == (4_796_873, 398_370_392, 414_561_072)
    real = sum(p.numel() for p in build_model(get_preset("rexnet-1.0")).parameters())
    assert real == 4_796_873


def test_mobilenetv2_matches_torchvision_counts():
    cfg = get_preset("mobilenetv2-1.0")
    cost = count_cost(cfg)
    assert (cost.params, cost.macs) == (3_504_872, 300_774_272)
    assert cfg.activation == cfg.dw_activation == "relu6"
    assert cfg.shortcut == "identity" and not any(b.se for b in cfg.blocks)


# The published table (README of the reference): MACs in billions, params in millions.
@pytest.mark.parametrize(
    ("name", "gmacs", "mparams"),
    [
        ("rexnet-0.9", 0.35, 4.1),
        ("rexnet-1.3", 0.66, 7.6),
        ("rexnet-1.5", 0.88, 9.7),
        ("rexnet-2.0", 1.5, 16),
        ("rexnet-3.0", 3.4, 34),
    ],
)
def test_published_widths(name, gmacs, mparams):
    cost = count_cost(get_preset(name))
    digits = 2 if gmacs < 1 else 1
    assert round(cost.macs / 1e9, digits) == gmacs
    assert abs(cost.params / 1e6 - mparams) < 0.75


def test_width_rules_of_reference():
    small = get_preset("rexnet-0.9")
    assert small.stem_channels == 32 and small.out_channels[0] == 16 and small.penultimate_channels == 1152
    big = get_preset("rexnet-1.3")
    assert big.stem_channels == 42 and big.penultimate_channels == 1664


def test_unknown_preset_lists_presets():
    with pytest.raises(UserError) as err:
        get_preset("rexnet-9")
    for name in PRESETS:
        assert name in str(err.value)


def test_expand_layers_variant():
    full = linear_schedule()
    assert expand_layers_schedule(15).out_channels == full.out_channels
    few = expand_layers_schedule(4)
    assert few.expand_layers == 4
    assert few.out_channels[0] == full.out_channels[0]
    assert abs(few.out_channels[-1] - full.out_channels[-1]) <= 1
    assert expand_layers_schedule(0).out_channels == [16] * 16


def test_depth_multiplier_and_ch_div():
    deep = linear_schedule(depth_mult=1.5)
    assert deep.depth == sum(-(-n * 3 // 2) for n in (1, 2, 2, 3, 3, 5))
    div = linear_schedule(width_mult=1.3, ch_div=8)
    assert all(c % 8 == 0 for c in div.out_channels)
    assert make_divisible(26, 8) == 24 and make_divisible(27, 8) == 32 and make_divisible(3, 8) == 8


def test_stagewise_width_multiplier():
    half = stagewise_schedule(width_mult=0.5)
    assert all(c % 8 == 0 for c in half.out_channels)
    assert half.penultimate_channels == 1280


@pytest.mark.parametrize("name", list(PRESETS))
def test_batch_of_one_and_channels_last(name):
    cfg = get_preset(name, num_classes=10)
    model = build_model(cfg).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        out_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert out.shape == (1, 10)
    torch.testing.assert_close(out, out_cl, rtol=1e-4, atol=1e-5)
