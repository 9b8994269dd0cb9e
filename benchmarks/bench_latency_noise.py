"""How a runtime's latency medians move with the host: rexnet-1.0 timed in alternating blocks.

Each round times rexnet-1.0 (BatchNorm folded, one thread) in three blocks of 30 runs: on
torch with one network built once, on torch with the network built afresh for the block,
and on ONNX Runtime. Over the rounds it prints each block kind's median of medians, the
coefficient of variation of its medians and of its fastest runs, and the correlation of the
log medians between kinds. If the fresh builds vary no more than the one build, the
variation is the host's, not the build's; the two runtimes' figures say how much each
feels it.

    python benchmarks/bench_latency_noise.py [--rounds 60] [--json FILE]

Needs the ``onnx`` extra. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np
import torch

from rexsearch.allocator import steady_allocator
from rexsearch.latency import environment, fold_batchnorm, runner, time_samples, torch_threads
from rexsearch.model import build_model
from rexsearch.principles import PRESETS

KINDS = ("torch, one build", "torch, built per block", "onnxruntime")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=60, help="rounds of the three blocks (default 60)")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per block (default 30)")
    ap.add_argument("--json", help="also write every block's median and fastest run (ms)")
    args = ap.parse_args()
    if args.rounds < 2 or args.runs < 1:
        print("error: --rounds must be at least 2 and --runs at least 1", file=sys.stderr)
        return 2
    steady_allocator()
    config = PRESETS["rexnet-1.0"].config()
    torch_env, ort_env = environment("cpu", "torch", 1, 1), environment("cpu", "onnxruntime", 1, 1)
    x = torch.randn(1, 3, 224, 224)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return fold_batchnorm(build_model(config))

    rows: list[dict[str, tuple[float, float]]] = []
    with torch_threads(1):
        once, ort = runner(model(), (x,), torch_env), runner(model(), (x,), ort_env)
        for i in range(args.rounds):
            fresh = runner(model(), (x,), torch_env)
            blocks = {}
            for kind, run, warmup in zip(KINDS, (once, fresh, ort), (3, 10, 3), strict=True):
                ms = [s * 1e3 for s in time_samples(run, warmup, args.runs, 0.0)]
                blocks[kind] = (statistics.median(ms), min(ms))
            rows.append(blocks)
            line = ", ".join(f"{k} {m:.2f} ms" for k, (m, _) in blocks.items())
            print(f"round {i + 1}: {line}", flush=True)
    for kind in KINDS:
        med = np.array([r[kind][0] for r in rows])
        fast = np.array([r[kind][1] for r in rows])
        print(
            f"{kind}: median of medians {np.median(med):.2f} ms; variation of the medians "
            f"{med.std() / med.mean():.1%}, of the fastest runs {fast.std() / fast.mean():.1%}"
        )
    logs = {k: np.log([r[k][0] for r in rows]) for k in KINDS}
    pairs = [(KINDS[0], KINDS[2]), (KINDS[1], KINDS[2]), (KINDS[0], KINDS[1])]
    print(
        "correlation of log medians: "
        + ", ".join(f"{a} / {b} {np.corrcoef(logs[a], logs[b])[0, 1]:+.2f}" for a, b in pairs)
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
