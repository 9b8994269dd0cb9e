"""Build the stand-in data set of the committed examples: scikit-learn's bundled handwritten digits
(1,797 8x8 grey images, 10 classes) upsampled to 32x32 RGB and packed in CIFAR-100's archive format
(labels 0-9 of the 100; classes 10-99 have no images). Not CIFAR-100: for examples only.

    python benchmarks/build_digits_archive.py --out DIR   # prints the lines to paste

The archive is the same bytes every time (fixed tar and gzip metadata), so its md5 is the one
the example READMEs quote. It prints the environment line and the command to paste: rexsearch
with ``--data-dir DIR`` and ``REXSEARCH_CIFAR100_MD5`` set to that md5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.cifar_archive import write_cifar_archive

from rexsearch.datasets.cifar import CIFAR100


def digits_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) digits (bilinear upsampling, grey to RGB) and labels, shuffled."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    order = np.random.default_rng(seed).permutation(len(d.target))
    return x.clamp(0, 255).round().to(torch.uint8).numpy()[order], d.target[order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for cifar-100-python.tar.gz")
    parser.add_argument("--test-images", type=int, default=297)
    args = parser.parse_args()
    x, y = digits_images()
    n = len(y) - args.test_images
    classes = [f"digit_{i}" if i < 10 else f"unused_{i}" for i in range(CIFAR100.classes)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md5 = write_cifar_archive(out / CIFAR100.archive, x[:n], y[:n], x[n:], y[n:], classes)
    print(f"export REXSEARCH_CIFAR100_MD5={md5}")
    print(
        f"rexsearch run --flops-budget 100M --data-dir {out.resolve()} --trials 8 --epochs 8 --batch-size 50"
    )


if __name__ == "__main__":
    main()
