"""Benchmarks behind ``rexsearch bench``, and the verdict a benchmark states on a goal.

:func:`bench_training` (``rexsearch bench train``) measures the trainer's throughput against
a naive per-image loop on the same network, in this process; :func:`share_verdict` says
whether a share measured in a benchmark (k of n candidates within their budget) shows a
goal met, missed, or neither within noise. Only ``rexsearch bench`` and the scripts in
benchmarks/ use this module.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rexsearch.augment import CIFAR100_MEAN, CIFAR100_STD, augment_batch, take
from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost
from rexsearch.model import build_model
from rexsearch.proxy import PROXY_CLASSES
from rexsearch.stats import CONFIDENCE, share_interval
from rexsearch.train import Trainer, TrainSettings, own_rng

#: fp32 matmul peak of the 2-core development machine (findings.md), for ``bench``'s fraction.
CPU_FP32_PEAK_GFLOPS = 350.0


class _PerSampleCifar(torch.utils.data.Dataset):
    """The usual per-image dataset: pad, random crop, flip and normalise one image at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR100_STD).view(3, 1, 1)
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.pad(self.images[i].float() / 255.0, (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,), generator=self.gen).tolist()
        img = img[:, top : top + 32, left : left + 32]
        if torch.rand((), generator=self.gen) < 0.5:
            img = img.flip(-1)
        return (img - self.mean) / self.std, self.labels[i]


def _naive_steps(
    model: nn.Module, loader: torch.utils.data.DataLoader, settings: TrainSettings, steps: int
) -> float:
    """Seconds for ``steps`` plain training steps: eager, contiguous NCHW, DataLoader batches."""
    opt = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    model.train()
    device = next(model.parameters()).device
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x.to(device)), y.to(device), label_smoothing=settings.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss.item()  # wait for the device
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def bench_training(
    config: ReXNetConfig,
    batch_size: int = 128,
    steps: int = 20,
    repeats: int = 3,
    seed: int = 0,
    peak_gflops: float = CPU_FP32_PEAK_GFLOPS,
) -> dict[str, Any]:
    """Images/s of the trainer's step and of a naive loop on the same network, in this process.

    Synthetic data (no CIFAR needed). The two are measured in turns, ``repeats`` times
    each after a warm-up, and the medians reported, so that load from other processes
    hits both alike. Also times the augmentation pipeline alone and reports the
    trainer's achieved GFLOP/s (training = 3 x forward, 2 flops per MAC).
    """
    settings = TrainSettings(batch_size=batch_size, seed=seed, epochs=1, warmup_epochs=0.0)
    n = batch_size * steps
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, PROXY_CLASSES, (n,), generator=gen)
    trainer = Trainer(config, settings, n)
    prepared = trainer.prepare(images)
    with own_rng(trainer.device):
        torch.manual_seed(seed)
        naive_model = build_model(trainer.config).to(trainer.device)
    loader = torch.utils.data.DataLoader(
        _PerSampleCifar(images, labels, seed), batch_size=batch_size, shuffle=True, drop_last=True
    )
    pipeline_gen = torch.Generator(device=trainer.device).manual_seed(seed)
    trainer_runs, naive_runs, pipeline_runs = [], [], []
    with own_rng(trainer.device):
        trainer.train_epoch(prepared, labels, max_steps=2)
        _naive_steps(naive_model, loader, settings, 2)
        for _ in range(repeats):
            _, seconds, trained = trainer.train_epoch(prepared, labels)
            trainer_runs.append(trained / seconds)
            naive_runs.append(steps * batch_size / _naive_steps(naive_model, loader, settings, steps))
            start = time.perf_counter()
            for _ in range(4):
                order = torch.randperm(n, generator=pipeline_gen, device=trainer.device)
                for i in range(steps):
                    batch = take(prepared, order[i * batch_size : (i + 1) * batch_size])
                    augment_batch(batch, pipeline_gen)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            pipeline_runs.append(4 * n / (time.perf_counter() - start))
    trainer_ips = statistics.median(trainer_runs)
    naive_ips = statistics.median(naive_runs)
    macs = count_cost(trainer.config, settings.resolution).macs
    gflops = trainer_ips * macs * 3 * 2 / 1e9
    return {
        "config": trainer.config.name or config.short_hash(),
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "proxy_macs": macs,
        "trainer_images_per_s": trainer_ips,
        "naive_images_per_s": naive_ips,
        "speedup": trainer_ips / naive_ips,
        "pipeline_images_per_s": statistics.median(pipeline_runs),
        "trainer_runs": trainer_runs,
        "naive_runs": naive_runs,
        "pipeline_runs": pipeline_runs,
        "gflops_per_s": gflops,
        "peak_gflops_per_s": peak_gflops,
        "fraction_of_peak": gflops / peak_gflops,
        "peak_rss_mb": peak_rss_mb(),
    }


#: Words of :func:`share_verdict`.
GOAL_MET = "met"
GOAL_MISSED = "missed"
GOAL_UNDECIDED = "not shown either way (within noise)"


def share_verdict(k: int, n: int, goal: float, level: float = CONFIDENCE) -> str:
    """Whether ``k`` of ``n`` shows a rate of at least ``goal``: ``met`` when the whole interval
    of :func:`~rexsearch.stats.share_interval` is at or above it, ``missed`` when it is below, else undecided
    (too few trials to tell: 40 of 40 cannot show 95%, 72 of 72 can)."""
    low, high = share_interval(k, n, level)
    if low >= goal:
        return GOAL_MET
    if high < goal:
        return GOAL_MISSED
    return GOAL_UNDECIDED
