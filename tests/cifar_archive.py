"""Writing a CIFAR-100 "python version" archive in the original format (tests and benchmarks only).

The tool itself never writes or substitutes CIFAR-100; tests build small archives with
this and serve them over loopback or pass their path.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rexsearch.data import FOLDER_NAME, NUM_CLASSES, file_md5


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
    if len(classes) != NUM_CLASSES:
        raise ValueError(f"classes must name {NUM_CLASSES} classes, got {len(classes)}")

    def batch(x: Any, y: Any, label: str) -> dict:
        images = np.asarray(x, dtype=np.uint8).reshape(len(y), 3 * 32 * 32)
        fine = [int(v) for v in np.asarray(y)]
        return {
            b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(fine))],
            b"batch_label": label.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": images,
        }

    meta = {
        b"fine_label_names": [c.encode() for c in classes],
        b"coarse_label_names": [f"superclass_{i}".encode() for i in range(NUM_CLASSES // 5)],
    }
    members = {
        "train": batch(train_x, train_y, "training batch 1 of 1"),
        "test": batch(test_x, test_y, "testing batch 1 of 1"),
        "meta": meta,
    }
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER_NAME)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for name, obj in members.items():
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{FOLDER_NAME}/{name}")
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return file_md5(path)
