"""Batch augmentation on tensors, on the training device.

The standard CIFAR recipe (4-pixel zero padding + random crop, horizontal flip,
per-channel normalisation) done for a whole uint8 batch with one gather: no per-sample
Python, no DataLoader workers competing with the training threads for the cores.

Tensors are (N, C, H, W) in shape and channels-last in memory: the dataset is kept that
way (:func:`channels_last`), a batch is cut from it with :func:`take`, and the model
gets float32 channels-last input, the layout the CPU and GPU conv kernels run fastest on.
Grayscale images (C = 1) stay one channel up to :func:`normalize`, which repeats them into
the three channels of the network's stem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: CIFAR-100 training-set channel statistics (of pixel values scaled to [0, 1]); the default.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

Stats = tuple[float, ...]


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """The (N, H, W, C) view of an NCHW tensor, contiguous (a copy only if ``x`` is not channels-last)."""
    return x.permute(0, 2, 3, 1).contiguous()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) with channels-last memory, the layout :func:`take` slices fast."""
    return _nhwc(x).permute(0, 3, 1, 2)


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The images at ``index`` of a channels-last batch, still channels-last."""
    return _nhwc(x).index_select(0, index).permute(0, 3, 1, 2)


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded images and random horizontal flip, one gather for the batch.

    ``x`` is uint8 (B, C, H, W); the result has the same shape, channels-last.
    """
    b, c, h, w = x.shape
    device = x.device
    padded = F.pad(_nhwc(x), (0, 0, padding, padding, padding, padding))
    width = w + 2 * padding
    top = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=device)
    flip = torch.rand(b, 1, 1, generator=generator, device=device) < 0.5
    cols = torch.arange(w, device=device).view(1, 1, w)
    cols = torch.where(flip, w - 1 - cols, cols) + left
    rows = torch.arange(h, device=device).view(1, h, 1) + top
    pixel = (rows * width + cols).view(b, h * w, 1) * c + torch.arange(c, device=device)
    out = padded.view(b, -1).gather(1, pixel.view(b, -1))
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


def normalize(
    x: torch.Tensor, resolution: int | None = None, mean: Stats = CIFAR100_MEAN, std: Stats = CIFAR100_STD
) -> torch.Tensor:
    """uint8 images to normalised float32, channels-last, resized to ``resolution`` if it differs.

    ``mean`` and ``std`` are per output channel (of values in [0, 1]); a one-channel batch is
    repeated into all of them (grayscale images feed the 3-channel stem).
    """
    if x.shape[1] not in (1, len(mean)):
        raise ValueError(f"images with {x.shape[1]} channels cannot be normalised to {len(mean)}")
    scale = torch.tensor(mean, device=x.device) * 255.0
    inv_std = 1.0 / (torch.tensor(std, device=x.device) * 255.0)
    # (N, H, W, C) minus a (C',) vector: a single channel broadcasts to all C' channels
    out = ((_nhwc(x).to(torch.float32) - scale) * inv_std).permute(0, 3, 1, 2)
    if resolution is not None and resolution != x.shape[-1]:
        out = F.interpolate(out, size=(resolution, resolution), mode="bilinear", align_corners=False)
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    resolution: int | None = None,
    padding: int = 4,
    mean: Stats = CIFAR100_MEAN,
    std: Stats = CIFAR100_STD,
) -> torch.Tensor:
    """A training batch: crop + flip + normalise (+ resize), float32 channels-last."""
    return normalize(crop_flip(x, generator, padding), resolution, mean, std)
