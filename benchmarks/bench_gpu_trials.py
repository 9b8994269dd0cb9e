"""Trials per hour on one GPU: one trial per GPU against four sharing it (0.25 GPU each).

Runs the same search twice on a local Ray (real proxy trials with bfloat16 autocast,
channels-last, data kept on the GPU) at the default fidelity (30 epochs on 45,000
images, batch 128) or the one given, and reports completed trials per hour and the
GPU's name. Synthetic CIFAR-shaped data
(class-patterned images), so it runs on machines that cannot download CIFAR-100:
throughput does not depend on the pixels.

Run: python benchmarks/bench_gpu_trials.py [--trials 8] [--epochs 30] [--train-images 45000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cluster import synthetic_split


def run_share(gpus_per_trial: float, args: argparse.Namespace, split: Any) -> dict[str, Any]:
    from rexsearch import search

    with tempfile.TemporaryDirectory() as tmp:
        settings = search.SearchSettings(
            run_dir=str(Path(tmp) / "run"),
            flops_budget=args.budget,
            trials=args.trials,
            epochs=args.epochs,
            objectives=("accuracy", "rank"),
            gpus_per_trial=gpus_per_trial,
            cpus_per_trial=args.cpus_per_trial,
            seed=args.seed,
            asha_min_epochs=10**6,  # every trial runs its full fidelity: a throughput measurement
        )
        search.start_run(settings, ["bench_gpu_trials"])
        start = time.perf_counter()
        outcome = search.execute(settings, split)
        seconds = time.perf_counter() - start
        trials = search.load_run(settings.run_dir).open_study().get_trials()
    return {
        "gpus_per_trial": gpus_per_trial,
        "trials_per_gpu": round(1 / gpus_per_trial),
        "finished": outcome.finished,
        "complete": sum(t.state.name == "COMPLETE" for t in trials),
        "seconds": seconds,
        "trials_per_hour": 3600 * outcome.finished / seconds,
        "median_train_seconds": sorted(t.user_attrs.get("train_seconds") or 0.0 for t in trials)[
            len(trials) // 2
        ],
    }


def main() -> None:
    import ray
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-images", type=int, default=45_000)
    parser.add_argument("--budget", type=int, default=400_000_000)
    parser.add_argument("--cpus-per-trial", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_trials: no CUDA GPU here")
    ray.init(address="local", num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        split = synthetic_split(args.train_images, 5000, args.seed)
        rows = [run_share(1.0, args, split), run_share(0.25, args, split)]
    finally:
        ray.shutdown()
    result = {"gpu": torch.cuda.get_device_name(0), "epochs": args.epochs, "runs": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for r in rows:
        print(
            f"{result['gpu']}: {r['trials_per_gpu']} trial(s) per GPU -> "
            f"{r['trials_per_hour']:.1f} trials/hour "
            f"({r['finished']} trials x {args.epochs} epochs in {r['seconds']:.0f} s)"
        )


if __name__ == "__main__":
    main()
