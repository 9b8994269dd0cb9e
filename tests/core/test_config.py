import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rexsearch.config import ACTIVATIONS, BlockConfig, ReXNetConfig
from rexsearch.errors import ConfigError
from rexsearch.principles import get_preset


def _tiny(**overrides) -> dict:
    data = get_preset("rexnet-1.0").to_dict()
    data.update(overrides)
    return data


def test_json_round_trip_and_hash(tmp_path):
    cfg = get_preset("rexnet-1.0")
    again = ReXNetConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.content_hash() == cfg.content_hash()
    path = tmp_path / "c.json"
    cfg.save(path)
    assert ReXNetConfig.load(path) == cfg
    assert json.loads(path.read_text())["format"] == "rexsearch.config/1"


def test_hash_changes_with_architecture_not_name():
    cfg = get_preset("rexnet-1.0")
    renamed = ReXNetConfig.from_dict({**cfg.to_dict(), "name": "other"})
    assert renamed.content_hash() == cfg.content_hash()
    wider = ReXNetConfig.from_dict({**cfg.to_dict(), "penultimate_channels": 1281})
    assert wider.content_hash() != cfg.content_hash()


def test_config_is_immutable():
    cfg = get_preset("rexnet-1.0")
    with pytest.raises(AttributeError):
        cfg.num_classes = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["blocks"][3].update(in_channels=60),
            "blocks[3].in_channels must equal blocks[2].out_channels (38), got 60",
        ),
        (
            lambda d: d["blocks"][0].update(in_channels=31),
            "blocks[0].in_channels must equal stem_channels (32), got 31",
        ),
        (lambda d: d.update(activation="swishy"), "activation must be one of"),
        (lambda d: d["blocks"][2].update(stride=3), "blocks[2].stride must be 1 or 2, got 3"),
        (
            lambda d: d["blocks"][2].update(kernel=4),
            "blocks[2].kernel must be an odd positive integer, got 4",
        ),
        (
            lambda d: d["blocks"][1].update(out_channels=0),
            "blocks[1].out_channels must be a positive integer, got 0",
        ),
        (lambda d: d.update(se_ratio=10000), "se_ratio 10000 leaves no SE channels in blocks[3]"),
        (
            lambda d: d.update(shortcut="dense"),
            "shortcut must be one of partial, identity, none, got 'dense'",
        ),
        (lambda d: d.update(dropout=1.5), "dropout must be a number in [0, 1), got 1.5"),
        (lambda d: d.update(num_classes=-1), "num_classes must be a positive integer, got -1"),
        (lambda d: d.update(colour="red"), "unknown config field 'colour'"),
        (lambda d: d["blocks"][0].update(dw_activation="nope"), "blocks[0].dw_activation must be one of"),
    ],
)
def test_validation_names_field_and_value(mutate, message):
    data = _tiny()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        ReXNetConfig.from_dict(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json: the config is not valid JSON"):
        ReXNetConfig.load(path)


def test_shortcut_kinds():
    cfg = get_preset("rexnet-1.0")
    widen = BlockConfig(16, 27, stride=1)
    same = BlockConfig(27, 27, stride=1)
    down = BlockConfig(27, 38, stride=2)
    assert cfg.uses_shortcut(widen) and cfg.uses_shortcut(same) and not cfg.uses_shortcut(down)
    ident = ReXNetConfig.from_dict({**cfg.to_dict(), "shortcut": "identity"})
    assert not ident.uses_shortcut(widen) and ident.uses_shortcut(same)
    none = ReXNetConfig.from_dict({**cfg.to_dict(), "shortcut": "none"})
    assert not none.uses_shortcut(same)


@settings(max_examples=50, deadline=None)
@given(
    widths=st.lists(st.integers(1, 64), min_size=1, max_size=6),
    act=st.sampled_from(ACTIVATIONS),
    classes=st.integers(1, 50),
)
def test_round_trip_property(widths, act, classes):
    blocks, prev = [], 8
    for w in widths:
        blocks.append(BlockConfig(prev, w, expansion=2, se=False))
        prev = w
    cfg = ReXNetConfig(blocks=tuple(blocks), stem_channels=8, activation=act, num_classes=classes)
    assert ReXNetConfig.from_json(cfg.to_json(indent=None)) == cfg


_TINY_JSON = '{"blocks": [{"in_channels": 32, "out_channels": 16}]'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"blocks": ' + "[" * 100_000 + "]" * 100_000 + "}", "the config is nested too deeply"),
        (
            '{"blocks": [{"in_channels": 32, "out_channels": 1' + "0" * 5000 + "}]}",
            "the config holds an integer of more than 4,300 digits; no value needs that many",
        ),
        (
            _TINY_JSON + ', "num_classes": 1' + "0" * 4000 + "}",
            "num_classes must be at most 16,777,216, got a",
        ),
        (
            _TINY_JSON + ', "penultimate_channels": 100000000}',
            "penultimate_channels must be at most 16,777,216",
        ),
        (_TINY_JSON + ', "dropout": "0.2"}', "dropout must be a number in [0, 1), got '0.2'"),
        (_TINY_JSON + ', "activation": ["silu"]}', "activation must be one of"),
        (_TINY_JSON + ', "se_ratio": 1e400}', "se_ratio must be a positive integer, got inf"),
        (_TINY_JSON + ', "activation": "' + "x" * 100_000 + '"}', "activation must be one of"),
        ('{"blocks": [[[[[[[[[[1]]]]]]]]]]}', "blocks[0] must be an object, got [[[[[[[...]]]]]]]"),
        ("[1, 2]", "a config must be a JSON object, got list"),
    ],
    ids=[
        "deep",
        "5000-digits",
        "4000-digits",
        "huge-width",
        "str-dropout",
        "list-act",
        "inf",
        "long",
        "lists",
        "top",
    ],
)
def test_hostile_config_json_is_one_short_sentence(tmp_path, text, message):
    path = tmp_path / "evil.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        ReXNetConfig.load(path)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize(
    "name", ["../../etc/x", "a/b", "/abs", ".hidden", "-flag", "", "a b", "x" * 129, 7, "n\x00"]
)
def test_config_name_must_be_a_plain_label(name):
    with pytest.raises(ConfigError, match="name must be 1 to 128 letters, digits"):
        ReXNetConfig.from_dict(_tiny(name=name))


@pytest.mark.parametrize("name", ["rexnet-1.0", "my_net.v2", "rexnet-1.0@proxy32", "A+B", "x" * 128])
def test_plain_config_names_are_kept(name):
    assert ReXNetConfig.from_dict(_tiny(name=name)).name == name


def test_hostile_configs_exit_2_from_the_cli(tmp_path, capsys, monkeypatch):
    from rexsearch.cli import main

    monkeypatch.chdir(tmp_path)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    named = tmp_path / "named.json"
    named.write_text(json.dumps(_tiny(name="../../../escaped")))
    assert main(["cost", "--config", str(deep)]) == 2
    assert "nested too deeply" in capsys.readouterr().err
    assert main(["train", "--config", str(named), "--epochs", "1"]) == 2
    assert "name must be" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.json", "named.json"]
