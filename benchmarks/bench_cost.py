"""Analytic cost vs fvcore: exact agreement and speed, on the presets and 100 random configs.

Run: python benchmarks/bench_cost.py [--random 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from rexsearch import count_cost, get_preset, measure_cost
from rexsearch.config import ACTIVATIONS, SHORTCUTS, ReXNetConfig
from rexsearch.principles import PRESETS, expand_layers_schedule, linear_schedule


def random_config(rng: random.Random) -> ReXNetConfig:
    """A random ReXNet-like network: schedule, width, depth, kernels, SE, activations."""
    depth_mult = rng.choice([0.5, 0.75, 1.0, 1.25])
    if rng.random() < 0.5:
        cfg = linear_schedule(width_mult=rng.uniform(0.3, 2.0), depth_mult=depth_mult)
    else:
        n = sum(-(-k * depth_mult // 1) for k in (1, 2, 2, 3, 3, 5))
        cfg = expand_layers_schedule(
            rng.randint(0, int(n) - 1), width_mult=rng.uniform(0.3, 2.0), depth_mult=depth_mult
        )
    data = cfg.to_dict()
    for b in data["blocks"]:
        b["kernel"] = rng.choice([3, 5, 7])
        b["se"] = rng.random() < 0.5
        b["expansion"] = rng.randint(1, 6)
    data.update(
        activation=rng.choice(ACTIVATIONS),
        shortcut=rng.choice(SHORTCUTS),
        num_classes=rng.choice([10, 100, 1000]),
        se_ratio=rng.choice([4, 8, 12]),
    )
    return ReXNetConfig.from_dict(data)


def time_analytic(cfg: ReXNetConfig, resolution: int, repeat: int = 200) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        count_cost(cfg, resolution)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cases = [(name, get_preset(name), 224) for name in PRESETS]
    cases += [
        (f"random-{i}", random_config(rng), rng.choice([32, 96, 160, 224, 225, 250]))
        for i in range(args.random)
    ]
    print(
        f"{'config':<16} {'res':>4} {'params':>12} {'MACs':>15} {'exact':>6} "
        f"{'analytic us':>12} {'fvcore ms':>10} {'x':>8}"
    )
    ratios, agree = [], 0
    for name, cfg, res in cases:
        a = count_cost(cfg, res)
        m = measure_cost(cfg, res)
        ta = time_analytic(cfg, res)
        exact = (a.params, a.macs, a.fvcore_total) == (m.params, m.macs, m.total)
        agree += exact
        ratios.append(m.seconds / ta)
        if not name.startswith("random") or not exact:
            print(
                f"{name:<16} {res:>4} {a.params:>12,} {a.macs:>15,} {exact!s:>6} {ta * 1e6:>12.1f} "
                f"{m.seconds * 1e3:>10.1f} {m.seconds / ta:>8.0f}"
            )
    print(f"\nexact agreement: {agree}/{len(cases)} configs")
    print(f"analytic speed-up over fvcore: median {statistics.median(ratios):,.0f}x, min {min(ratios):,.0f}x")


if __name__ == "__main__":
    main()
