"""Writing tiny data set files in their original formats (tests only): Fashion-MNIST's IDX files
and image folders with PNG and JPEG images, class-patterned so a small network can learn them."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from rexsearch.datasets import fashion_mnist
from rexsearch.datasets.base import file_md5


def patterned(
    per_class: int, classes: int, side: int, channels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, channels, side, side) whose brightness pattern tells the class, and labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = rng.normal(40, 10, (len(labels), channels, side, side))
    for i, c in enumerate(labels):
        images[i, :, :, (c * side) // classes : (c * side) // classes + max(1, side // classes)] = 230
    perm = rng.permutation(len(labels))
    return images.clip(0, 255).round().astype(np.uint8)[perm], labels[perm]


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_fashion(
    directory: Path, seed: int = 0, gz: bool = True, level: int = 9
) -> dict[str, dict[str, str]]:
    """The four IDX files of a tiny Fashion-MNIST (20 train, 4 test images a class) in ``directory``;
    per file, the md5 of the written file and of its content."""
    directory.mkdir(parents=True, exist_ok=True)
    train_x, train_y = patterned(20, 10, 28, 1, seed)
    test_x, test_y = patterned(4, 10, 28, 1, seed + 1)
    arrays = {
        "train-images-idx3-ubyte": (train_x[:, 0], 2051),
        "train-labels-idx1-ubyte": (train_y.astype(np.uint8), 2049),
        "t10k-images-idx3-ubyte": (test_x[:, 0], 2051),
        "t10k-labels-idx1-ubyte": (test_y.astype(np.uint8), 2049),
    }
    sums = {}
    for name, (array, magic) in arrays.items():
        payload = idx_bytes(np.ascontiguousarray(array), magic)
        path = directory / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(payload, compresslevel=level, mtime=0) if gz else payload)
        sums[name] = {"file": file_md5(path), "content": hashlib.md5(payload).hexdigest()}
    return sums


def fashion_env(sums: dict[str, dict[str, str]], which: str = "file") -> str:
    return ",".join(sums[name][which] for name in fashion_mnist.FILES)


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)


COLOURS = {"cat": (220, 30, 30), "dog": (30, 220, 30), "eel": (30, 30, 220)}


def make_folder(
    root: Path, parts: dict[str, int] | None = None, classes: tuple[str, ...] = ("cat", "dog", "eel")
) -> Path:
    """``root/[part/]CLASS/i.png|jpg``: ``parts`` maps a part ('' for the flat layout) to images a class."""
    for part, n in (parts or {"": 6}).items():
        for c in classes:
            for i in range(n):
                write_image(
                    root / part / c / f"{i}.{'png' if i % 2 else 'jpg'}", COLOURS[c], (30 + i, 24 + 2 * i)
                )
    return root
