"""Data sets: the named ones (CIFAR-100, CIFAR-10, Fashion-MNIST) and own image folders.

:func:`load_dataset` is the one entry point: it finds, downloads, verifies and decodes a data
set and returns a :class:`~rexsearch.datasets.base.DataSet` (uint8 images N x C x H x W, labels,
class names, normalisation statistics and the set's identity); :func:`search_split` cuts the
search's training and validation parts from it. Modules: ``base`` (the common type, errors, the
cache folder), ``download`` (capped downloads, md5, the folder lock, safe tar extraction),
``cache`` (the decoded cache), ``cifar`` (both CIFAR python archives), ``fashion_mnist`` (IDX
files), ``folder`` (own images), ``splits``.

This module itself is light (no torch): the CLI names the data sets in ``--help`` from
:data:`DATASETS`; the loaders and splits are imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rexsearch.datasets.base import DataError, DataSet, Progress, cache_dir, file_md5

#: The proxy's input size: named sets are stored at it, image folders are resized to it.
IMAGE_SIZE = 32


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a data set before loading it (``None``: known once loaded)."""

    name: str
    title: str
    classes: int | None
    train_images: int | None
    test_images: int | None
    summary: str


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "cifar100", "CIFAR-100", 100, 50_000, 10_000, "32x32 colour photos, 100 classes (default)"
        ),
        DatasetInfo("cifar10", "CIFAR-10", 10, 50_000, 10_000, "32x32 colour photos, 10 classes"),
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST",
            10,
            60_000,
            10_000,
            "28x28 grayscale clothing, 10 classes (zero-padded to 32x32, repeated to 3 channels)",
        ),
        DatasetInfo(
            "folder",
            "an image folder",
            None,
            None,
            None,
            "own PNG/JPEG images: --data-dir with a folder per class",
        ),
    )
}
DEFAULT_DATASET = "cifar100"


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; a UserError naming the choices otherwise."""
    if name not in DATASETS:
        raise DataError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    return DATASETS[name]


def dataset_help() -> str:
    """The data sets in words, for ``--help``."""
    return "; ".join(f"{d.name}: {d.summary}" for d in DATASETS.values())


def check_data_dir(data_dir: str | Path | None) -> None:
    """Refuse a given ``--data-dir`` that is not a folder: a mistyped path is not silently
    replaced by the cache, a system copy or a download."""
    if data_dir is None:
        return
    given = Path(data_dir).expanduser()
    if not given.is_dir():
        what = "a file" if given.exists() else "nothing is there"
        raise DataError(f"--data-dir {data_dir} is not a folder ({what}); give the folder holding the data")


def load_dataset(
    name: str = DEFAULT_DATASET,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: Progress | None = None,
    resolution: int = IMAGE_SIZE,
) -> DataSet:
    """Data set ``name`` from ``data_dir``, the cache, a system copy or a download.

    ``resolution`` is the size an image folder is decoded to (the named sets have fixed sizes).
    ``progress(kind, label, done, total)`` reports downloads (bytes) and decoding (images).
    Raises :class:`DataError` when the data cannot be had, with the ways out in the message.
    """
    dataset_info(name)
    check_data_dir(data_dir)
    if name == "folder":
        if data_dir is None:
            raise DataError("--dataset folder needs --data-dir PATH: a folder with one sub-folder per class")
        from rexsearch.datasets.folder import load_folder

        return load_folder(data_dir, resolution, progress)
    if name == "fashion-mnist":
        from rexsearch.datasets.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(data_dir, download, progress)
    from rexsearch.datasets.cifar import SPECS, load_cifar

    return load_cifar(SPECS[name], data_dir, download, progress)


# ---------------------------------------------------------------------------- what runs recorded
def recorded_dataset(data: Any) -> dict[str, Any] | None:
    """run.json's ``data`` in today's form: runs recorded before ``--dataset`` kept only
    ``{"archive_md5", "cifar100"}`` and are CIFAR-100; None when there is no record."""
    if not isinstance(data, dict):
        return None
    if "dataset" in data:
        return data
    md5 = data.get("archive_md5")
    return {
        "dataset": "cifar100",
        "title": "CIFAR-100",
        "digest": f"md5:{md5}" if md5 else None,
        "official": bool(data.get("cifar100", True)),
        **data,
    }


def title_of(record: dict[str, Any] | None) -> str:
    """The data set's name for people (``CIFAR-100``, ``folder flowers``)."""
    if not record:
        return "no data set"
    name = record.get("dataset")
    return str(record.get("title") or (DATASETS[name].title if name in DATASETS else name))


def describe(record: dict[str, Any] | None) -> str:
    """``Fashion-MNIST (10 classes; 60,000 training and 10,000 test images)`` and the search split."""
    if not record:
        return "none (a rank-only run trains no proxy)"
    counts = []
    for key, what in (("train_images", "training"), ("val_images", "validation"), ("test_images", "test")):
        if record.get(key):
            counts.append(f"{record[key]:,} {what}")
    parts = [f"{record['classes']} classes" if record.get("classes") else ""]
    if counts:
        parts.append((", ".join(counts[:-1]) + " and " if len(counts) > 1 else "") + counts[-1] + " images")
    split = record.get("split")
    if isinstance(split, dict) and split.get("train_images") is not None:
        parts.append(
            f"search split {int(split['train_images']):,} training / {int(split.get('val_images') or 0):,} "
            f"validation images, {split.get('validation', 'held out')}"
        )
    inner = "; ".join(p for p in parts if p)
    return f"{title_of(record)} ({inner})" if inner else title_of(record)


def mismatch(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> str | None:
    """How two data set records differ (name, or content digest), or None when they agree or
    one of them is unknown."""
    if not recorded or not current:
        return None
    if recorded.get("dataset") != current.get("dataset"):
        return f"{title_of(recorded)}, not {title_of(current)}"
    a, b = recorded.get("digest"), current.get("digest")
    if a and b and a != b:
        return f"{title_of(recorded)} with digest {a}, not the copy found now (digest {b})"
    return None


_LAZY = {
    "Split": "rexsearch.datasets.splits",
    "search_split": "rexsearch.datasets.splits",
    "stratified_order": "rexsearch.datasets.splits",
    "stratified_subset": "rexsearch.datasets.splits",
    "evaluation_split": "rexsearch.datasets.splits",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rexsearch.datasets' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "IMAGE_SIZE",
    "DataError",
    "DataSet",
    "DatasetInfo",
    "Progress",
    "Split",
    "cache_dir",
    "check_data_dir",
    "dataset_help",
    "dataset_info",
    "describe",
    "evaluation_split",
    "file_md5",
    "load_dataset",
    "mismatch",
    "recorded_dataset",
    "search_split",
    "stratified_order",
    "stratified_subset",
    "title_of",
]
