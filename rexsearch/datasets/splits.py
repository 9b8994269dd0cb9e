"""Seeded, class-stratified splits: the search's training/validation parts, subsets, and the
evaluation images of ``rexsearch train``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rexsearch.augment import CIFAR100_MEAN, CIFAR100_STD
from rexsearch.datasets.base import DataError, DataSet

#: The search's validation images when the data set has no validation images of its own and
#: ``--val-images`` is not given (an image folder): a tenth of the images, at least one per
#: class, at most this many.
DEFAULT_VAL_IMAGES = 5000


@dataclass(frozen=True)
class Split:
    """The images a proxy trains on and is evaluated on (uint8 images, int64 labels).

    ``num_classes`` is the classifier's width; ``mean`` and ``std`` normalise the inputs;
    ``dataset`` is what run.json records (the data set's identity and the split's sizes).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int = 100
    mean: tuple[float, ...] = CIFAR100_MEAN
    std: tuple[float, ...] = CIFAR100_STD
    dataset: dict[str, Any] | None = field(default=None, compare=False, hash=False)


def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation that deals the classes out round-robin.

    Every prefix of it is class-stratified: the first k indices hold about k / C images
    of each of the C classes (exactly, when k is a multiple of C and the classes are
    balanced), in random order within each class.
    """
    n = labels.numel()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    by_class = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[by_class]
    counts = torch.bincount(sorted_labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[sorted_labels]
    tiebreak = torch.rand(n, generator=gen, dtype=torch.float64)
    return by_class[torch.argsort(rank.double() + tiebreak)]


def stratified_subset(
    x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-stratified subset of ``n`` images (all of them, shuffled, if ``n`` is None)."""
    if n is not None and not 1 <= n <= y.numel():
        raise DataError(f"--train-images must be between 1 and {y.numel()}, got {n}")
    idx = stratified_order(y, seed)[:n]
    return x[idx], y[idx]


def default_val_images(data: DataSet) -> int:
    """The held-out validation images of a data set without its own (module constant)."""
    total = data.train_y.numel()
    return min(DEFAULT_VAL_IMAGES, max(data.num_classes, total // 10))


def search_split(
    data: DataSet, val_images: int | None = 5000, train_images: int | None = None, seed: int = 0
) -> Split:
    """The search's training and validation parts of ``data`` (the test images are not touched).

    Without validation images of its own (the named sets, a folder without ``val/``), the data
    set's training images are split: ``val_images`` held out (None: :func:`default_val_images`),
    ``train_images`` (None: all the others) of the rest. With its own (a folder's ``val/``), the
    training images train (``train_images`` of them) and ``val_images`` of the validation ones
    (None: all) select. Both parts are class-stratified and depend only on ``seed``.
    """
    total = data.train_y.numel()
    x, y = data.train_x, data.train_y
    if data.val_x is not None and data.val_y is not None:
        own = data.val_y.numel()
        if val_images is not None and not 1 <= val_images <= own:
            raise DataError(
                f"--val-images must be between 1 and {own} (the images in val/), got {val_images}"
            )
        val_idx = stratified_order(data.val_y, seed)[:val_images]
        val_x, val_y = data.val_x[val_idx], data.val_y[val_idx]
        if train_images is not None and not 1 <= train_images <= total:
            raise DataError(f"--train-images must be between 1 and {total}, got {train_images}")
        train_idx = stratified_order(y, seed)[: train_images or total]
        validation = "val/"
    else:
        val_images = default_val_images(data) if val_images is None else val_images
        if not 1 <= val_images < total:
            raise DataError(
                f"the validation split must hold between 1 and {total - 1} images, got {val_images}"
                + (
                    ""
                    if total > val_images
                    else f" ({data.title} has {total:,} training images; lower --val-images)"
                )
            )
        available = total - val_images
        if train_images is not None and not 1 <= train_images <= available:
            raise DataError(
                f"--train-images must be between 1 and {available} (the {total} training images less "
                f"{val_images} for validation), got {train_images}"
            )
        order = stratified_order(y, seed)
        val_x, val_y = x[order[:val_images]], y[order[:val_images]]
        train_idx = order[val_images : val_images + (train_images or available)]
        validation = "held out of the training images"
    sizes = {"train_images": int(train_idx.numel()), "val_images": int(val_y.numel()), "seed": seed}
    return Split(
        x[train_idx],
        y[train_idx],
        val_x,
        val_y,
        num_classes=data.num_classes,
        mean=data.mean,
        std=data.std,
        dataset={**data.identity(), "split": {**sizes, "validation": validation}},
    )


@dataclass(frozen=True)
class Evaluation:
    """What ``rexsearch train`` trains on and reports top-1 on; ``what`` names the latter."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    what: str


def evaluation_split(data: DataSet, train_images: int | None = None, seed: int = 0) -> Evaluation:
    """The training images (a stratified subset of ``train_images``) and the images top-1 is reported
    on: the test set, else the data set's validation images, else a held-out part (a folder with
    neither ``test/`` nor ``val/``: :func:`default_val_images` of its images)."""
    if data.test_y.numel():
        x, y = stratified_subset(data.train_x, data.train_y, train_images, seed)
        return Evaluation(x, y, data.test_x, data.test_y, "test")
    if data.val_x is not None and data.val_y is not None:
        x, y = stratified_subset(data.train_x, data.train_y, train_images, seed)
        return Evaluation(x, y, data.val_x, data.val_y, "val/")
    split = search_split(data, None, train_images, seed)
    held = f"{split.val_y.numel():,} held-out training images"
    return Evaluation(split.train_x, split.train_y, split.val_x, split.val_y, held)
