"""Which rank protocol predicts proxy accuracy better: ``batchnorm`` or ``paper`` (numbers for the README).

Draws ``--configs`` candidates of a search space under one MACs budget (as a search does:
every candidate within 3% of the budget), trains each proxy on a stand-in data set
(scikit-learn's handwritten digits, upsampled to 32x32 RGB: **not CIFAR-100**) for
``--seeds`` seeds, and measures on the fresh network the rank objective under both
protocols of :func:`rexsearch.rank.measure_rank` and the nuclear-norm surrogate. Prints
Kendall's tau (and Spearman's rho) of each predictor against the mean proxy accuracy,
with MACs and params as the reference predictors, and writes one CSV row per config.

    python benchmarks/bench_rank_protocols.py --out reports/rank-study/protocols.csv
    python benchmarks/bench_rank_protocols.py --quick      # a check that it runs (about a minute)

Run it on an otherwise idle machine: it trains ``configs x seeds`` proxies.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_digits_archive import digits_images

from rexsearch.datasets.splits import Split, stratified_order
from rexsearch.proxy import PROXY_RESOLUTION, proxy_config
from rexsearch.rank import RANK_PROTOCOLS, measure_rank
from rexsearch.space import Budget, RandomTrial, load_space
from rexsearch.train import TrainSettings, train_proxy


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def digits_split(train_images: int, val_images: int, seed: int = 0) -> Split:
    """A class-stratified training and validation split of the digits (the rest unused)."""
    x, y = digits_images()
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    order = stratified_order(y, seed)
    val, train = order[:val_images], order[val_images : val_images + train_images]
    return Split(x[train], y[train], x[val], y[val])


def candidates(space_name: str, macs: int, n: int, seed: int) -> list:
    space = load_space(space_name)
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        try:
            out.append(space.decode(space.suggest(RandomTrial(rng)), Budget(macs)))
        except Exception:  # a draw the budget cannot meet: draw again, as the sampler does
            continue
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="rexnet")
    ap.add_argument("--flops-budget", type=float, default=100e6, help="MACs budget (default 100M)")
    ap.add_argument("--configs", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=2, help="training seeds per config (accuracy averaged)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="4 configs, 1 seed, 1 epoch on 200 images")
    ap.add_argument("--out", help="CSV file, one row per config (a .json with the summary beside it)")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.seeds, args.epochs, args.train_images, args.val_images = 4, 1, 1, 200, 100
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    split = digits_split(args.train_images, args.val_images)
    cands = candidates(args.space, int(args.flops_budget), args.configs, seed=0)
    log(f"{len(cands)} configs of {args.space} at {args.flops_budget / 1e6:g}M MACs; stand-in data: digits")
    rows = []
    for i, cand in enumerate(cands):
        proxy = proxy_config(cand.config)
        row = {"config": i, "hash": cand.config.short_hash(), "macs": cand.cost.macs}
        row["params"] = cand.cost.params
        for protocol in RANK_PROTOCOLS:
            r = measure_rank(proxy, resolution=PROXY_RESOLUTION, seed=0, protocol=protocol)
            row[f"rank_{protocol}"] = r.rank
            row[f"nuclear_{protocol}"] = r.nuclear_norm
        accs = []
        for seed in range(args.seeds):
            settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, seed=seed, device="cpu")
            accs.append(train_proxy(cand.config, split, settings).final_accuracy)
        row["accuracy"] = statistics.fmean(accs)
        row["accuracy_seeds"] = json.dumps([round(a, 4) for a in accs])
        rows.append(row)
        log(
            f"  {i + 1}/{len(cands)}: acc {row['accuracy']:.3f} rank bn {row['rank_batchnorm']:.3f} "
            f"paper {row['rank_paper']:.3f} ({time.perf_counter() - began:.0f} s)"
        )
    acc = [r["accuracy"] for r in rows]
    predictors = ["rank_batchnorm", "rank_paper", "nuclear_batchnorm", "nuclear_paper", "macs", "params"]
    summary: dict = {
        "space": args.space,
        "flops_budget": args.flops_budget,
        "configs": len(rows),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "train_images": args.train_images,
        "val_images": args.val_images,
        "data": "scikit-learn digits upsampled to 32x32 (stand-in, not CIFAR-100)",
        "accuracy_range": [min(acc), max(acc)],
        "seconds": time.perf_counter() - began,
        "predictors": {},
    }
    # Seed-to-seed agreement bounds what any predictor can reach.
    if args.seeds >= 2:
        per_seed = [json.loads(r["accuracy_seeds"]) for r in rows]
        first, second = [a[0] for a in per_seed], [a[1] for a in per_seed]
        summary["tau_seed0_vs_seed1"] = kendalltau(first, second).statistic
    print(f"{'predictor':<20} {'Kendall tau':>12} {'p':>8} {'Spearman rho':>13}")
    for name in predictors:
        values = [r[name] for r in rows]
        tau = kendalltau(values, acc)
        rho = spearmanr(values, acc).statistic
        summary["predictors"][name] = {"kendall_tau": tau.statistic, "p": tau.pvalue, "spearman_rho": rho}
        shown = "n/a" if math.isnan(tau.statistic) else f"{tau.statistic:+.3f}"
        print(f"{name:<20} {shown:>12} {tau.pvalue:>8.3f} {rho:>+13.3f}")
    if "tau_seed0_vs_seed1" in summary:
        print(f"seed 0 vs seed 1 accuracy: tau {summary['tau_seed0_vs_seed1']:+.3f}")
    print(f"accuracy {min(acc):.3f}-{max(acc):.3f}; {summary['seconds']:.0f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
