"""Writing CIFAR-100 and CIFAR-10 "python version" archives in the original format (tests and
benchmarks only).

The tool itself never writes or substitutes CIFAR; tests build small archives with this and
serve them over loopback or pass their path.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rexsearch.datasets.base import file_md5
from rexsearch.datasets.cifar import CIFAR10, CIFAR100, CifarSpec


def cifar_batch(x: Any, y: Any, label: str, spec: CifarSpec) -> dict:
    images = np.asarray(x, dtype=np.uint8).reshape(len(y), 3 * 32 * 32)
    labels = [int(v) for v in np.asarray(y)]
    batch = {
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(labels))],
        b"batch_label": label.encode(),
        spec.label_key.encode(): labels,
        b"data": images,
    }
    if spec is CIFAR100:
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    return batch


def write_members(path: Path, folder: str, members: dict[str, object]) -> None:
    """The archive with fixed metadata (tar and gzip times 0, no file name in the gzip header),
    so the same members give the same bytes, and the same md5, every time."""
    import gzip

    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        for name, obj in members.items():
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))


def write_cifar_archive(
    path: str | Path,
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    test_x: torch.Tensor | np.ndarray,
    test_y: torch.Tensor | np.ndarray,
    classes: tuple[str, ...] | list[str],
) -> str:
    """Write a ``cifar-100-python.tar.gz`` in the original format and return its md5.

    Images are uint8 (N, 3, 32, 32) or (N, 3072), labels 0..99; the coarse labels are
    ``fine // 5`` (the real mapping is not needed by anything here).
    """
    if len(classes) != CIFAR100.classes:
        raise ValueError(f"classes must name {CIFAR100.classes} classes, got {len(classes)}")
    meta = {
        b"fine_label_names": [c.encode() for c in classes],
        b"coarse_label_names": [f"superclass_{i}".encode() for i in range(CIFAR100.classes // 5)],
    }
    members = {
        "train": cifar_batch(train_x, train_y, "training batch 1 of 1", CIFAR100),
        "test": cifar_batch(test_x, test_y, "testing batch 1 of 1", CIFAR100),
        "meta": meta,
    }
    path = Path(path)
    write_members(path, CIFAR100.folder, members)
    return file_md5(path)


def write_cifar10_archive(
    path: str | Path,
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    test_x: torch.Tensor | np.ndarray,
    test_y: torch.Tensor | np.ndarray,
    classes: tuple[str, ...] | list[str],
) -> str:
    """Write a ``cifar-10-python.tar.gz`` in the original format and return its md5: the training
    images dealt into ``data_batch_1`` .. ``data_batch_5`` in order, ``test_batch``, ``batches.meta``."""
    if len(classes) != CIFAR10.classes:
        raise ValueError(f"classes must name {CIFAR10.classes} classes, got {len(classes)}")
    x, y = np.asarray(train_x), np.asarray(train_y)
    cuts = np.array_split(np.arange(len(y)), len(CIFAR10.train))
    members: dict[str, object] = {
        name: cifar_batch(x[idx], y[idx], f"training batch {i} of 5", CIFAR10)
        for i, (name, idx) in enumerate(zip(CIFAR10.train, cuts, strict=True), start=1)
    }
    members["test_batch"] = cifar_batch(test_x, test_y, "testing batch 1 of 1", CIFAR10)
    members["batches.meta"] = {
        b"label_names": [c.encode() for c in classes],
        b"num_cases_per_batch": len(cuts[0]),
        b"num_vis": 3072,
    }
    path = Path(path)
    write_members(path, CIFAR10.folder, members)
    return file_md5(path)
