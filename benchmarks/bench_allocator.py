"""Why latency measurements and the proxy trainer raise glibc's allocation thresholds.

Times rexnet-1.0 (one thread, batch 1, 224x224) in a fresh process, after 12 other
networks have run, and once more; then one epoch of rexnet-1.0's CIFAR proxy (two
threads, 1,024 synthetic images, batch 128), twice. Both with glibc's default adaptive
mmap threshold and with :func:`rexsearch.allocator.steady_allocator` (what every
measurement and the trainer now do), each in its own fresh Python process.

    python benchmarks/bench_allocator.py

Run it on an idle machine: a competing job moves the numbers more than the allocator does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CHILD = "REXSEARCH_BENCH_ALLOCATOR_CHILD"


def child(steady: bool) -> dict[str, float]:
    import rexsearch.allocator as alloc
    from rexsearch.latency import environment, measure_latency
    from rexsearch.principles import get_preset
    from rexsearch.space import calibration_networks

    if steady:
        assert alloc.steady_allocator(), "glibc's mallopt is not available here"
    else:
        alloc.ALLOCATOR_STEADY = True  # measure with glibc's defaults: skip the mallopt call
    env = environment("cpu", "torch", 1)
    ref = get_preset("rexnet-1.0")
    out = {}

    def measure(tag: str) -> None:
        lat = measure_latency(ref, env=env, warmup=5, repeats=15)
        out[f"{tag}_median_ms"], out[f"{tag}_min_ms"] = lat.median_ms, lat.min_ms

    measure("fresh")
    for cfg in calibration_networks(12):
        measure_latency(cfg, env=env, warmup=2, repeats=3)
    measure("after_12_networks")
    measure("again")

    import torch

    from rexsearch.datasets.splits import Split
    from rexsearch.proxy import proxy_config
    from rexsearch.train import TrainSettings, train_proxy

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)

    labels = torch.randint(0, 100, (1024,), generator=g)
    split = Split(images(1024), labels, images(256), torch.arange(256) % 100)
    for i in range(2):
        start = time.perf_counter()
        train_proxy(proxy_config(ref), split, TrainSettings(epochs=1, device="cpu"))
        out[f"train_epoch_{i + 1}_s"] = time.perf_counter() - start
    return out


def main() -> int:
    if os.environ.get(CHILD):
        print(json.dumps(child(os.environ[CHILD] == "steady")))
        return 0
    results = {}
    for mode in ("default", "steady"):
        proc = subprocess.run(
            [sys.executable, __file__],
            env={**os.environ, CHILD: mode},
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        row = results[mode]
        print(
            f"{mode:8s} fresh {row['fresh_median_ms']:.2f} ms, after 12 networks "
            f"{row['after_12_networks_median_ms']:.2f} ms, again {row['again_median_ms']:.2f} ms (medians); "
            f"proxy epochs {row['train_epoch_1_s']:.2f} s, {row['train_epoch_2_s']:.2f} s",
            file=sys.stderr,
        )
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
