"""The decoded cache: a data set's tensors kept in one safetensors file after the first decode.

The file's metadata names its format and the fingerprint of what it was decoded from (sizes,
modification times, checksums); a file whose format or source differs, or that cannot be read,
is ignored and decoded again. Writing goes through a temporary sibling and a rename, so a
reader never sees half a file; a folder that cannot be written only costs the next load a decode.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


def load_decoded(path: Path, fmt: str, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and JSON metadata of ``path`` when it holds format ``fmt`` decoded from ``source``."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != fmt or meta.get("source") != source:
            return None
        tensors = load_file(str(path))
        return tensors, json.loads(meta.get("info", "{}"))
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        log.warning("ignoring the decoded cache %s: %s", path, exc)
        return None


def save_decoded(
    path: Path, tensors: dict[str, torch.Tensor], fmt: str, source: str, info: dict[str, Any]
) -> None:
    """Keep ``tensors`` at ``path`` (atomically) with the format, source and JSON ``info``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"format": fmt, "source": source, "info": json.dumps(info)},
        )
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot keep decoded tensors at %s: %s", path, exc)
    finally:
        tmp.unlink(missing_ok=True)
