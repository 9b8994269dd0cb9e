"""Wall-clock time of measure_rank: the CIFAR proxy of rexnet-1.0 and full-size rexnet-1.0, 32x32.

Run: python benchmarks/bench_rank.py [--repeat 5] [--samples 256]
Prints the median (and min) of ``--repeat`` runs after one warm-up run, with the torch
thread count, so the numbers can be quoted next to the machine they came from.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rexsearch import get_preset
from rexsearch.proxy import proxy_config
from rexsearch.rank import DEFAULT_SAMPLES, measure_rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    args = parser.parse_args()
    base = get_preset("rexnet-1.0")
    cases = [("rexnet-1.0 CIFAR proxy", proxy_config(base)), ("rexnet-1.0 full size", base)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.samples} samples, 32x32")
    print(f"{'network':<24} {'median s':>9} {'min s':>7} {'layers':>7} {'rank':>7} {'nuclear':>8}")
    for name, config in cases:
        result = measure_rank(config, samples=args.samples)
        times = []
        for seed in range(args.repeat):
            start = time.perf_counter()
            measure_rank(config, samples=args.samples, seed=seed)
            times.append(time.perf_counter() - start)
        print(
            f"{name:<24} {statistics.median(times):>9.3f} {min(times):>7.3f} {len(result.per_layer):>7} "
            f"{result.rank:>7.4f} {result.nuclear_norm:>8.4f}"
        )


if __name__ == "__main__":
    main()
