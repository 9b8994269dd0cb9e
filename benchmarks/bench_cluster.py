"""Scale-out benchmark: a simulated two-node Ray cluster against one node, same trials.

Each setting starts its own ``ray.cluster_utils.Cluster`` on this machine (a head with
one CPU, plus one worker node with one CPU for the two-node case), runs the same search
(same seed, so the same candidates) of real proxy trials — fvcore check, feature rank
and a short CIFAR-shaped training on synthetic class-patterned images, one CPU thread
per trial — and reports completed trials per minute over the wall time of the search
(Ray start-up excluded). Both clusters are shut down again; nothing else is touched.

Run: python benchmarks/bench_cluster.py [--trials 8] [--epochs 4] [--train-images 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def synthetic_split(train: int, val: int, seed: int = 0) -> Any:
    """CIFAR-100-shaped uint8 images whose class is a colour pattern plus noise."""
    from rexsearch.datasets.splits import Split

    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randint(0, 256, (100, 3, 4, 4), generator=gen).float()

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 100
        base = prototypes[labels].repeat_interleave(8, 2).repeat_interleave(8, 3)
        noise = torch.randn(base.shape, generator=gen) * 32
        return (base + noise).clamp(0, 255).to(torch.uint8), labels

    train_x, train_y = make(train)
    val_x, val_y = make(val)
    return Split(train_x, train_y, val_x, val_y)


TRAIN_ONE = """
import sys, time, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from bench_cluster import synthetic_split
from rexsearch.space import Budget, baseline_candidate
from rexsearch.train import TrainSettings, train_proxy
config = baseline_candidate("rexnet-linear", Budget({budget})).config
split = synthetic_split({train}, 500)
result = train_proxy(config, split, TrainSettings(epochs={epochs}, batch_size=100))
print(result.images_per_s)
"""


def raw_ceiling(args: argparse.Namespace) -> dict[str, float]:
    """Images/s of one single-thread proxy training alone, and summed over two at once."""
    code = TRAIN_ONE.format(
        here=str(Path(__file__).resolve().parent),
        budget=args.budget,
        train=args.train_images,
        epochs=args.epochs,
    )

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)

    alone = float(start().communicate()[0])
    pair = [start(), start()]
    together = sum(float(p.communicate()[0]) for p in pair)
    return {"one_alone": alone, "two_together": together, "ceiling": together / alone}


def run_on(nodes: int, args: argparse.Namespace, split: Any) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from rexsearch import search

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        with tempfile.TemporaryDirectory() as tmp:
            settings = search.SearchSettings(
                run_dir=str(Path(tmp) / "run"),
                flops_budget=args.budget,
                trials=args.trials,
                epochs=args.epochs,
                batch_size=100,
                objectives=("accuracy", "rank"),
                cpus_per_trial=1,
                storage_path=str(Path(tmp) / "ray"),  # one machine: every node sees it
                seed=args.seed,
                asha_min_epochs=10**6,  # no early stopping: both runs do exactly the same work
            )
            search.start_run(settings, ["bench_cluster"])
            start = time.perf_counter()
            outcome = search.execute(settings, split)
            seconds = time.perf_counter() - start
            trials = search.load_run(settings.run_dir).open_study().get_trials()
            states = [t.state.name for t in trials]
            used_nodes = len({t.user_attrs.get("node") for t in trials if t.user_attrs.get("node")})
        ray.shutdown()
    finally:
        cluster.shutdown()
    return {
        "nodes": nodes,
        "finished": outcome.finished,
        "complete": states.count("COMPLETE"),
        "seconds": seconds,
        "trials_per_min": 60 * outcome.finished / seconds,
        "nodes_used": used_nodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=200_000_000, help="MACs budget (default 200M)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    split = synthetic_split(args.train_images, 500, args.seed)
    ceiling = raw_ceiling(args)
    one = run_on(1, args, split)
    two = run_on(2, args, split)
    speedup = two["trials_per_min"] / one["trials_per_min"]
    result = {
        "one_node": one,
        "two_nodes": two,
        "speedup": speedup,
        "machine": ceiling,
        "of_ceiling": speedup / ceiling["ceiling"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for r in (one, two):
        print(
            f"{r['nodes']} node(s) x 1 CPU: {r['finished']} trials ({r['complete']} COMPLETE) in "
            f"{r['seconds']:.1f} s = {r['trials_per_min']:.2f} trials/min on {r['nodes_used']} node(s)"
        )
    print(f"two nodes / one node: {speedup:.2f}x")
    print(
        f"machine ceiling without Ray: one training {ceiling['one_alone']:.0f} img/s alone, two at once "
        f"{ceiling['two_together']:.0f} img/s together = {ceiling['ceiling']:.2f}x; the search reaches "
        f"{result['of_ceiling']:.0%} of it"
    )


if __name__ == "__main__":
    main()
