"""What every data set shares: the error type, the loaded data set, progress, the cache folder.

Light on purpose (no torch at import time), so ``rexsearch run --help`` can name the data
sets without loading torch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rexsearch.errors import UserError

if TYPE_CHECKING:
    import torch

ENV_DATA = "REXSEARCH_DATA"

#: ``progress(kind, label, done, total)``: ``kind`` "download" counts bytes (``total`` 0 when the
#: server does not say), "decode" counts images; ``label`` names what is downloaded or decoded.
Progress = Callable[[str, str, int, int], None]

_CHUNK = 1 << 20


class DataError(UserError):
    """The data cannot be found, fetched, verified or read; the message says what to do."""


@dataclass(frozen=True)
class DataSet:
    """A loaded data set: uint8 images (N, C, H, W) with C 1 (grayscale) or 3, int64 labels.

    ``val_x``/``val_y`` are set only where the data set brings its own validation images (an
    image folder's ``val/``); the search otherwise holds out part of the training images.
    ``test_x``/``test_y`` may hold no image (an image folder without ``test/``). ``mean`` and
    ``std`` are the per-channel statistics inputs are normalised with (of pixel values scaled
    to [0, 1], three channels: a grayscale set repeats its one value). ``digest`` identifies the
    content (``md5:...`` of the verified files, ``sha256:...`` of an image folder); ``official``
    is False when the files were admitted by a checksum override instead of the official one.
    """

    name: str
    title: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    digest: str
    official: bool = True
    source: str = ""
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def identity(self) -> dict[str, Any]:
        """What run.json, metrics.json and model cards record about the data set."""
        return {
            "dataset": self.name,
            "title": self.title,
            "digest": self.digest,
            "official": self.official,
            "classes": self.num_classes,
            "class_names": list(self.classes),
            "train_images": int(self.train_y.numel()),
            "val_images": None if self.val_y is None else int(self.val_y.numel()),
            "test_images": int(self.test_y.numel()),
            "image_shape": list(self.train_x.shape[1:]),
            "mean": list(self.mean),
            "std": list(self.std),
            "source": self.source,
            **({"note": self.note} if self.note else {}),
            **self.extra,
        }


def cache_dir() -> Path:
    """The cache directory: ``$REXSEARCH_DATA`` or ``~/.cache/rexsearch``."""
    value = os.environ.get(ENV_DATA)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "rexsearch"


def replace_hint(path: Path) -> str:
    """What to do with a file that is not the expected one: a cached copy is rexsearch's to
    delete and download again; anything else is the user's own file, never to be deleted."""
    try:
        cached = path.resolve().is_relative_to(cache_dir().resolve())
    except OSError:
        cached = False
    return "Delete it to download again" if cached else "Put the original file there instead"


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def one_line(exc: BaseException | str) -> str:
    """An exception's message on one line (for an error that names a file)."""
    return " ".join(str(exc).split()) or type(exc).__name__
