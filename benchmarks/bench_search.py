"""Search orchestration and decoding benchmarks.

1. Orchestration overhead per trial (Ray Tune + Optuna + SQLite storage + user attributes)
   with a trivial objective over 20 trials, one at a time: the median gap between
   successive trial completions.
2. Budget-exact decoding: 1,000 samples of rexnet.yaml at 400M, time and share inside
   [0.97 B, B].

Run: python benchmarks/bench_search.py [--trials 20]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from rexsearch.space import Budget, load_space


def trivial_trial(tune_config: dict, split=None, job=None) -> None:
    """Reports made-up objective values at once: only the orchestration costs time."""
    from ray import tune

    number = tune_config["candidate"].get("number", 0)
    tune.report(
        {
            "accuracy": 0.5 + 0.001 * number,
            "rank": 0.9,
            "rank_value": 0.9,
            "epoch": 1,
            "final": True,
            "done_at": time.time(),
        }
    )


def bench_orchestration(trials: int) -> list[float]:
    from rexsearch import search

    with tempfile.TemporaryDirectory() as tmp:
        settings = search.SearchSettings(
            run_dir=str(Path(tmp) / "run"),
            flops_budget=400_000_000,
            trials=trials,
            objectives=("accuracy", "rank"),
            max_concurrent=1,
            cpus_per_trial=1,
        )
        started = search.ensure_ray(None)
        done: list[float] = []

        def on_progress(p: search.Progress) -> None:
            finished = p.done + p.failed + p.pruned
            if finished > len(done):
                done.append(time.perf_counter())

        try:
            search.start_run(settings, ["bench"])
            t0 = time.perf_counter()
            search.execute(settings, None, on_progress=on_progress, trainable_fn=trivial_trial)
            total = time.perf_counter() - t0
        finally:
            if started:
                import ray

                ray.shutdown()
    gaps = [b - a for a, b in itertools.pairwise(done)]
    print(
        f"orchestration: {trials} trials in {total:.1f} s; "
        f"per-trial gap median {statistics.median(gaps):.3f} s, "
        f"max {max(gaps):.3f} s (includes Tuner start-up: {done[0] - t0:.1f} s to the first completion)"
    )
    return gaps


def bench_decoding(n: int = 1000) -> None:
    budget = Budget(400_000_000)
    space = load_space("rexnet")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        cands = space.sample(budget, n, seed=0)
        times.append(time.perf_counter() - t0)
    inside = sum(budget.lower <= c.cost.macs <= budget.macs for c in cands)
    print(
        f"decoding: {n} samples of rexnet.yaml at 400M in {statistics.median(times):.2f} s (median of 3); "
        f"{inside}/{len(cands)} inside [0.97 B, B]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    bench_decoding()
    bench_orchestration(args.trials)


if __name__ == "__main__":
    main()
