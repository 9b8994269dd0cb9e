"""Weights on disk: every safetensors file rexsearch writes opens with load_model alone."""

from __future__ import annotations

import pickle

import pytest
import torch
from support.synthetic import tiny_config

from rexsearch.checkpoints import (
    META_CONFIG,
    META_DIGEST,
    META_LAYOUT,
    load_model,
    read_safetensors,
    save_weights,
)
from rexsearch.errors import UserError
from rexsearch.model import build_model
from rexsearch.proxy import proxy_config
from rexsearch.train import Trainer, TrainSettings, save_checkpoint


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same outputs (up to float rounding: a trainer's model runs channels-last)."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), rtol=1e-4, atol=1e-5)


def test_kept_proxy_weights_carry_config_and_layout(tmp_path):
    proxy = proxy_config(tiny_config())
    model = build_model(proxy)
    path = tmp_path / "trial-3.safetensors"
    save_weights(model, proxy, path)
    _, metadata = read_safetensors(path)
    assert metadata[META_LAYOUT] == "rexsearch" and '"format": "rexsearch.config/1"' in metadata[META_CONFIG]
    assert _same(load_model(path), model)
    assert not list(tmp_path.glob(".*part"))  # written atomically, nothing left behind


def test_training_checkpoint_opens_with_load_model(tmp_path):
    trainer = Trainer(tiny_config(), TrainSettings(epochs=1, batch_size=8, device="cpu"), 16)
    save_checkpoint(trainer, tmp_path)
    assert _same(load_model(tmp_path), trainer.model)  # the folder: the checkpoint checkpoint.json names
    assert _same(load_model(tmp_path / "checkpoint-epoch0.safetensors"), trainer.model)


def test_pickled_objects_are_refused_in_plain_words(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(
        UserError, match="holds Python objects other than tensors; rexsearch will not unpickle"
    ):
        load_model(path, preset="rexnet-1.0")


def test_weights_of_a_non_float_type_are_refused(tmp_path):
    model = build_model(proxy_config(tiny_config()))
    path = tmp_path / "ints.safetensors"
    save_weights(model, proxy_config(tiny_config()), path)
    state, metadata = read_safetensors(path)
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].to(torch.int32)
    from safetensors.torch import save_file

    metadata.pop(META_DIGEST)  # written by another tool: no checksum to catch it first
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    with pytest.raises(UserError, match=f"{key} holds torch.int32 values"):
        load_model(path)


@pytest.mark.parametrize("damage", ["pickled-state", "foreign-weights", "not-json", "not-a-dict"])
def test_damaged_training_checkpoints_are_refused_in_one_line(tmp_path, damage):
    from rexsearch.train import load_checkpoint

    trainer = Trainer(tiny_config(), TrainSettings(epochs=1, batch_size=8, device="cpu"), 16)
    save_checkpoint(trainer, tmp_path)
    pointer = tmp_path / "checkpoint.json"
    if damage == "pickled-state":

        class Payload:
            def __reduce__(self):
                return (print, ("unpickled!",))

        with (tmp_path / "checkpoint-epoch0.pt").open("wb") as f:
            pickle.dump({"optimizer": Payload()}, f)
        problem = "rexsearch will not unpickle it"
    elif damage == "foreign-weights":
        pointer.write_text('{"epoch": 0, "weights": "../elsewhere/w.safetensors", "state": "x.pt"}')
        problem = "must name two files of this folder"
    elif damage == "not-json":
        pointer.write_bytes(b"\xff\xfe")
        problem = "is not UTF-8 text"
    else:
        pointer.write_text("[1, 2]")
        problem = "must name two files of this folder"
    with pytest.raises(UserError, match=problem) as info:
        load_checkpoint(
            Trainer(tiny_config(), TrainSettings(epochs=1, batch_size=8, device="cpu"), 16), tmp_path
        )
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
