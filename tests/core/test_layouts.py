import json
from pathlib import Path

import pytest
import torch

from rexsearch import build_model, get_preset
from rexsearch.errors import LayoutError
from rexsearch.layouts import expected_shapes, from_layout, to_layout

REFERENCE = Path(__file__).parents[1] / "data" / "reference"


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_layout_matches_reference_keys_order_and_shapes(layout):
    table = json.loads((REFERENCE / f"rexnet-1.0.{layout}-state-dict.json").read_text())["state_dict"]
    expected = expected_shapes(get_preset("rexnet-1.0"), layout)
    assert list(expected.items()) == [(k, tuple(s)) for k, s, _ in table]


@pytest.mark.parametrize("layout", ["official", "timm", "rexsearch"])
@pytest.mark.parametrize("preset", ["rexnet-1.0", "rexnet-1.3", "mobilenetv2-1.0"])
def test_round_trip_same_outputs(layout, preset):
    cfg = get_preset(preset, num_classes=7)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    converted = to_layout(model.state_dict(), cfg, layout)
    assert list(converted) == list(expected_shapes(cfg, layout))
    other = build_model(cfg).eval()
    other.load_state_dict(from_layout(converted, cfg, layout), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_strict_errors_name_the_key():
    cfg = get_preset("rexnet-1.0")
    state = to_layout(build_model(cfg).state_dict(), cfg, "timm")
    missing = dict(state)
    del missing["features.3.se.fc1.bias"]
    with pytest.raises(LayoutError, match=r"missing key 'features\.3\.se\.fc1\.bias'"):
        from_layout(missing, cfg, "timm")
    extra = {**state, "features.99.conv.weight": torch.zeros(1)}
    with pytest.raises(LayoutError, match=r"unexpected key 'features\.99\.conv\.weight'"):
        from_layout(extra, cfg, "timm")
    wrong = {**state, "head.fc.weight": torch.zeros(10, 1280)}
    with pytest.raises(
        LayoutError, match=r"'head\.fc\.weight' has shape \[10, 1280\], expected \[1000, 1280\]"
    ):
        from_layout(wrong, cfg, "timm")
    with pytest.raises(LayoutError, match="layout must be one of"):
        to_layout(build_model(cfg).state_dict(), cfg, "keras")
