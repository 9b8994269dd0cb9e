"""Weights on disk: writing and reading state_dicts, layout detection, :func:`load_model`.

Every safetensors file rexsearch writes (an export's ``model.safetensors``, a search's
proxy weights kept with ``--keep-weights``, a training checkpoint) carries in its metadata
the layout, the config (``rexsearch.config/1``) and a SHA-256 of its tensors, so
:func:`load_model` can open any of them without being told the architecture, and a
tampered or truncated file is refused. Reading never runs code: safetensors, or
``torch.load(weights_only=True)`` for ``.pt``/``.pth``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rexsearch.config import ReXNetConfig
from rexsearch.errors import ConfigError, LayoutError, UserError
from rexsearch.files import atomic_write
from rexsearch.layouts import LAYOUTS, from_layout, to_layout
from rexsearch.model import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: A training output folder names its latest checkpoint here (see :mod:`rexsearch.train`).
CHECKPOINT_JSON = "checkpoint.json"

META_LAYOUT = "rexsearch.layout"
META_CONFIG = "rexsearch.config"
META_DIGEST = "rexsearch.sha256"
CLASSIFIER_KEYS = {"official": "output.1.weight", "timm": "head.fc.weight", "rexsearch": "classifier.weight"}


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state_dict, in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_metadata(
    state: Mapping[str, torch.Tensor], config: ReXNetConfig, layout: str = "rexsearch", **extra: str
) -> dict[str, str]:
    """The safetensors metadata rexsearch writes: layout, config, digest (plus ``extra``)."""
    return {
        "format": "pt",
        META_LAYOUT: layout,
        META_CONFIG: config.to_json(indent=None),
        META_DIGEST: tensor_digest(state),
        **extra,
    }


def save_state(
    state: Mapping[str, torch.Tensor],
    config: ReXNetConfig,
    path: Path,
    layout: str = "rexsearch",
    **extra: str,
) -> None:
    """Write a state_dict as safetensors with :func:`weights_metadata`, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = weights_metadata(tensors, config, layout, **extra)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata))


def save_weights(
    model: nn.Module, config: ReXNetConfig, path: Path, layout: str = "rexsearch", **extra: str
) -> dict[str, torch.Tensor]:
    """Write ``model``'s state_dict in ``layout`` (safetensors; metadata: layout, config, digest,
    plus ``extra``)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if layout != "rexsearch":
        state = {k: v.contiguous() for k, v in to_layout(state, config, layout).items()}
    save_state(state, config, path, layout, **extra)
    return state


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, checked against its recorded digest."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt"
        ) from None
    digest = metadata.get(META_DIGEST)
    if digest is not None and tensor_digest(state) != digest:
        raise UserError(
            f"{path} is corrupt: its tensors do not match the checksum recorded when it was written"
        )
    return state, metadata


def read_torch(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.pt``/``.pth`` file, read with ``weights_only=True`` (no code runs)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} holds Python objects other than tensors; rexsearch will not unpickle it, because "
            "unpickling can run arbitrary code. Save a plain state_dict (or safetensors) instead"
        ) from None
    except Exception as exc:  # torch raises many types for bad files; all mean "not loadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path} cannot be loaded as a weights-only PyTorch state_dict ({first[:200]}); "
            "it may be truncated or corrupt"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise UserError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def detect_layout(state: Mapping[str, torch.Tensor], source: Path | str = "state_dict") -> str:
    """``official``, ``timm`` or ``rexsearch``, told apart by the classifier's key."""
    for layout, key in CLASSIFIER_KEYS.items():
        if key in state:
            return layout
    first = next(iter(state), None)
    raise LayoutError(
        f"{source}: cannot tell its layout (first key {first!r}); expected a rexsearch, official "
        "(clovaai/rexnet) or timm ReXNet state_dict"
    )


def load_into(
    config: ReXNetConfig, state: Mapping[str, torch.Tensor], layout: str, source: Path
) -> nn.Module:
    """The network of ``config`` with ``state`` (in ``layout``) loaded strictly, in eval mode."""
    try:
        converted = from_layout(state, config, layout)
    except LayoutError as exc:
        raise LayoutError(f"{source}: {exc}") from None
    model = build_model(config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _weights_in(directory: Path) -> tuple[Path, ReXNetConfig | None]:
    """The weights file of an export folder (model.safetensors + config.json) or of a training
    output folder (the checkpoint its checkpoint.json names)."""
    if (directory / WEIGHTS_FILE).is_file():
        config_file = directory / CONFIG_FILE
        return directory / WEIGHTS_FILE, ReXNetConfig.load(config_file) if config_file.is_file() else None
    pointer = directory / CHECKPOINT_JSON
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["weights"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{pointer} is unreadable ({exc})") from None
        if not isinstance(name, str) or Path(name).name != name:
            raise UserError(f"{pointer} names a weights file outside its folder: {name!r}")
        return directory / name, None
    raise UserError(
        f"{directory} has no {WEIGHTS_FILE} or {CHECKPOINT_JSON}; is it a rexsearch export or "
        "training folder?"
    )


def load_model(path: str | Path, preset: str | None = None) -> nn.Module:
    """The network stored at ``path``, in eval mode.

    ``path`` is an export directory (config.json + model.safetensors), a training output
    directory (``rexsearch train --out``: its latest checkpoint), or a state_dict file
    (``.safetensors`` written by rexsearch or anyone, or ``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)``) in the rexsearch, official or timm layout, detected
    from its keys. The architecture comes from ``preset`` when given (its classifier follows
    the file's number of classes), else from the directory's config.json or the file's
    metadata. Unreadable, corrupt or mismatched files raise
    :class:`~rexsearch.errors.UserError` naming the file.
    """
    from rexsearch.principles import get_preset

    path = Path(path)
    config: ReXNetConfig | None = None
    if path.is_dir():
        path, config = _weights_in(path)
        if preset is not None:
            config = None
    elif not path.is_file():
        raise UserError(f"no such file or directory: {path}")
    metadata: dict[str, Any]
    if path.suffix == ".safetensors":
        state, metadata = read_safetensors(path)
    elif path.suffix in (".pt", ".pth"):
        state, metadata = read_torch(path), {}
    else:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .safetensors, .pt or .pth")
    for key, tensor in state.items():  # weights are numbers of a float type (BatchNorm's counter aside)
        if not tensor.is_floating_point() and not key.endswith("num_batches_tracked"):
            raise UserError(
                f"{path}: {key} holds {tensor.dtype} values; a network's weights are floating point"
            )
    layout = metadata.get(META_LAYOUT) or detect_layout(state, path)
    if layout not in LAYOUTS:
        raise LayoutError(f"{path}: unknown layout {layout!r} in its metadata")
    if preset is not None:
        config = get_preset(preset)
        classifier = state.get(CLASSIFIER_KEYS[layout])
        if classifier is not None and classifier.ndim >= 1 and classifier.shape[0] != config.num_classes:
            config = config.with_num_classes(int(classifier.shape[0]))
    elif config is None and META_CONFIG in metadata:
        try:
            config = ReXNetConfig.from_json(metadata[META_CONFIG])
        except ConfigError as exc:
            raise UserError(f"{path}: the config in its metadata is invalid: {exc}") from None
    if config is None:
        raise UserError(
            f"{path} does not say which architecture it holds; pass preset=NAME (e.g. rexnet-1.0)"
        )
    return load_into(config, state, layout, path)
