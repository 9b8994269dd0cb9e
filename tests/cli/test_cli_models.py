import json

from rexsearch.cli import main
from rexsearch.config import ReXNetConfig


def test_presets_list_and_json(capsys):
    assert main(["presets"]) == 0
    assert "rexnet-1.0" in capsys.readouterr().out
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name": "rexnet-1.0", "params": 4_796_873, "macs": 398_370_392}.items() <= rows[1].items()


def test_preset_json_edit_and_cost(capsys, tmp_path):
    assert main(["presets", "rexnet-1.0"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert ReXNetConfig.from_dict(data).name == "rexnet-1.0"
    data["num_classes"] = 100
    path = tmp_path / "my.json"
    path.write_text(json.dumps(data))
    assert main(["cost", "--config", str(path), "--json", "--verify", "--resolution", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resolution"] == 32
    assert out["fvcore"] == {"params": out["params"], "macs": out["macs"], "total": out["fvcore_total"]}
    assert set(out["seconds"]) == {"analytic", "fvcore"}
    assert out["params"] == 4_796_873 - 900 * 1281


def test_cost_json_shape(capsys):
    assert main(["cost", "--preset", "rexnet-1.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "resolution": 224,
        "params": 4_796_873,
        "macs": 398_370_392,
        "fvcore_total": 414_561_072,
    }


def test_unknown_preset_exit_2(capsys):
    assert main(["cost", "--preset", "rexnet-7"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'rexnet-7'" in err and "rexnet-1.0" in err and "Traceback" not in err
    assert main(["presets", "nope"]) == 2


def test_invalid_config_file_exit_2(capsys, tmp_path):
    path = tmp_path / "bad.json"
    data = json.loads(ReXNetConfig.from_dict({"blocks": [{"in_channels": 32, "out_channels": 16}]}).to_json())
    data["blocks"][0]["stride"] = 3
    path.write_text(json.dumps(data))
    assert main(["cost", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rexsearch: error: {path}: blocks[0].stride must be 1 or 2, got 3"
    assert main(["cost", "--config", str(tmp_path / "missing.json")]) == 2
