"""How well the search's cheap signals rank networks against longer training (Kendall tau).

Run (resumable: every finished training is appended to ``trainings.csv`` at once, and a
rerun with the same settings skips what is there):

    python benchmarks/bench_fidelity.py --out reports/fidelity            # measure, then analyse
    python benchmarks/bench_fidelity.py --out reports/fidelity --analyse  # analyse what is there

``--configs`` networks are drawn uniformly (seeded) from a space at one MACs budget and
decoded the way the search decodes them, plus the baselines. Each is trained at the
search's proxy fidelity (``--proxy-epochs`` on ``--train-images`` of the training images,
top-1 on ``--val-images`` held-out training images, as ``rexsearch run`` does) with
``--proxy-seeds`` seeds, and at a long fidelity (``--long-epochs`` on the whole training set,
top-1 on the official test set, as ``rexsearch train`` does) with ``--long-seeds`` seeds.
The untrained proxy's rank objective and nuclear norm are measured as a search trial
measures them (``measure_rank`` at the trial's seed).

The analysis writes ``configs.csv`` (one row per network) and ``agreement.csv`` /
``agreement.json``: Kendall's tau-b, with a percentile bootstrap interval over networks,
between the long-training accuracy and each predictor (proxy accuracy of one seed, as the
search sees it; its mean over seeds; the rank objective; the nuclear norm; params; MACs),
and between the proxy's two seeds (the ceiling a one-seed proxy can reach). Order of work:
network by network (proxy seeds, then long), so an interrupted run has complete rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost, parse_budget
from rexsearch.datasets import load_dataset
from rexsearch.datasets.splits import evaluation_split, search_split
from rexsearch.proxy import proxy_config
from rexsearch.rank import measure_rank
from rexsearch.space import Budget, InfeasibleError, RandomTrial, baseline_configs, load_space
from rexsearch.stats import agreement_difference, kendall_tau, mean, rank_agreement
from rexsearch.train import Trainer, TrainSettings

TRAININGS = "trainings.csv"
FIELDS = ["network", "fidelity", "seed", "accuracy", "epochs", "train_images", "eval_images", "seconds"]
PREDICTORS = {
    "proxy_one_seed": "proxy accuracy, one seed (what the search sees)",
    "proxy_mean": "proxy accuracy, mean of the seeds",
    "rank": "rank objective (untrained proxy)",
    "nuclear_norm": "nuclear norm (untrained proxy)",
    "params": "params",
    "macs": "MACs",
}


def draw_networks(
    space_name: str, budget: Budget, count: int, seed: int, classes: int
) -> list[dict[str, Any]]:
    """``count`` feasible uniform draws from the space (infeasible draws are redrawn), then the
    baselines, each as ``{"network", "config", "macs", "params"}``."""
    space = load_space(space_name)
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count:
            raise SystemExit(f"only {len(out)} of {count} draws were feasible at this budget")
        values = space.suggest(RandomTrial(rng))
        try:
            config = space.decode(values, budget).config
        except InfeasibleError:
            continue
        out.append({"network": f"draw-{len(out):02d}", "config": config})
    for name, candidate in baseline_configs(budget, classes).items():
        out.append({"network": name, "config": candidate.config})
    for item in out:
        cost = count_cost(item["config"], budget.resolution)
        item.update(macs=cost.macs, params=cost.params)
    return out


def done_trainings(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_training(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def train_once(config: ReXNetConfig, settings: TrainSettings, data: Any, parts: tuple[Any, ...]) -> float:
    train_x, train_y, eval_x, eval_y = parts
    trainer = Trainer(config, settings, train_y.numel(), data.num_classes, data.mean, data.std)
    return trainer.fit(train_x, train_y, eval_x, eval_y).final_accuracy


def measure(args: argparse.Namespace, out: Path, networks: list[dict[str, Any]], data: Any) -> None:
    split = search_split(data, args.val_images, args.train_images, 0)
    full = evaluation_split(data, args.long_train_images, 0)
    proxy_parts = (split.train_x, split.train_y, split.val_x, split.val_y)
    long_parts = (full.train_x, full.train_y, full.test_x, full.test_y)
    have = {(r["network"], r["fidelity"], int(r["seed"])) for r in done_trainings(out / TRAININGS)}
    plan = []
    for item in networks:
        plan += [(item, "proxy", s) for s in args.proxy_seeds]
        plan += [(item, "long", s) for s in args.long_seeds]
    todo = [p for p in plan if (p[0]["network"], p[1], p[2]) not in have]
    print(
        f"{len(plan) - len(todo)} of {len(plan)} trainings already done; {len(todo)} to go", file=sys.stderr
    )
    for i, (item, fidelity, seed) in enumerate(todo, 1):
        if fidelity == "proxy":
            settings = TrainSettings(epochs=args.proxy_epochs, batch_size=args.batch_size, seed=seed)
            parts = proxy_parts
        else:
            warmup = min(args.long_warmup, args.long_epochs)
            settings = TrainSettings(
                epochs=args.long_epochs, batch_size=args.batch_size, seed=seed, warmup_epochs=warmup
            )
            parts = long_parts
        start = time.perf_counter()
        accuracy = train_once(item["config"], settings, data, parts)
        seconds = time.perf_counter() - start
        append_training(
            out / TRAININGS,
            {
                "network": item["network"],
                "fidelity": fidelity,
                "seed": seed,
                "accuracy": f"{accuracy:.6f}",
                "epochs": settings.epochs,
                "train_images": parts[1].numel(),
                "eval_images": parts[3].numel(),
                "seconds": f"{seconds:.1f}",
            },
        )
        print(
            f"[{i}/{len(todo)}] {item['network']} {fidelity} seed {seed}: {100 * accuracy:.2f}% "
            f"in {seconds:.0f} s",
            file=sys.stderr,
        )


def network_rows(
    networks: list[dict[str, Any]], out: Path, classes: int, proxy_seeds: list[int]
) -> list[dict]:
    by: dict[tuple[str, str], list[float]] = {}
    one: dict[tuple[str, int], float] = {}
    for r in done_trainings(out / TRAININGS):
        by.setdefault((r["network"], r["fidelity"]), []).append(float(r["accuracy"]))
        if r["fidelity"] == "proxy":
            one[(r["network"], int(r["seed"]))] = float(r["accuracy"])
    rows = []
    for item in networks:
        name = item["network"]
        rank = measure_rank(proxy_config(item["config"], num_classes=classes), seed=proxy_seeds[0])
        row = {
            "network": name,
            "macs": item["macs"],
            "params": item["params"],
            "rank": round(rank.rank, 6),
            "nuclear_norm": round(rank.nuclear_norm, 6),
            "expand_layers": item["config"].expand_layers,
            "channels": " ".join(map(str, item["config"].out_channels)),
        }
        for seed in proxy_seeds:
            row[f"proxy_seed{seed}"] = one.get((name, seed))
        proxy = by.get((name, "proxy"), [])
        row["proxy_mean"] = mean(proxy) if len(proxy) == len(proxy_seeds) else None
        long = by.get((name, "long"), [])
        row["long_mean"] = mean(long) if long else None
        row["long_seeds"] = len(long)
        row["config"] = json.dumps(item["config"].to_dict(), sort_keys=True)
        rows.append(row)
    return rows


def agreement(rows: list[dict], proxy_seeds: list[int], resamples: int) -> list[dict[str, Any]]:
    """Kendall tau of each predictor against long-training accuracy, and the proxy's seed ceiling."""
    done = [r for r in rows if r["long_mean"] is not None and r["proxy_mean"] is not None]
    target = [r["long_mean"] for r in done]
    out = []

    def add(key: str, label: str, x: list[float], y: list[float], against: str) -> None:
        a = rank_agreement(x, y, resamples=resamples)
        out.append(
            {"predictor": key, "label": label, "against": against, "networks": a.n, "tau": a.tau}
            | {"low": a.low, "high": a.high}
        )

    for key, label in PREDICTORS.items():
        if key == "proxy_one_seed":
            # each seed alone against long training; the quoted tau is their mean, the interval
            # is the first seed's (the search trains each network once, at its run's seed)
            taus = [kendall_tau([r[f"proxy_seed{s}"] for r in done], target) for s in proxy_seeds]
            add(key, label, [r[f"proxy_seed{proxy_seeds[0]}"] for r in done], target, "long")
            out[-1]["tau"] = mean(taus)
            out[-1]["tau_each_seed"] = taus
        else:
            add(key, label, [float(r[key]) for r in done], target, "long")
    columns = {
        "rank": "rank",
        "nuclear_norm": "nuclear_norm",
        "proxy_one_seed": f"proxy_seed{proxy_seeds[0]}",
    }
    for key, column in columns.items():  # does a signal beat plain cost? paired, same networks
        for cost in ("params", "macs"):
            d = agreement_difference(
                [float(r[column]) for r in done], [float(r[cost]) for r in done], target, resamples
            )
            out.append(
                {"predictor": f"{key}-minus-{cost}", "label": f"{PREDICTORS[key]} minus {PREDICTORS[cost]}"}
                | {"against": "long (paired difference of tau)", "networks": d.n, "tau": d.tau}
                | {"low": d.low, "high": d.high}
            )
    if len(proxy_seeds) >= 2:
        a, b = proxy_seeds[:2]
        add(
            "proxy_seed_to_seed",
            f"proxy seed {a} against proxy seed {b} (the ceiling of a one-seed proxy)",
            [r[f"proxy_seed{a}"] for r in done],
            [r[f"proxy_seed{b}"] for r in done],
            "proxy",
        )
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports/fidelity"))
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--space", default="rexnet")
    parser.add_argument("--flops-budget", default="100M")
    parser.add_argument("--resolution", type=int, default=224, help="the budget's resolution")
    parser.add_argument("--configs", type=int, default=30, help="networks drawn from the space")
    parser.add_argument("--draw-seed", type=int, default=0)
    parser.add_argument("--proxy-epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--proxy-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--long-epochs", type=int, default=1)
    parser.add_argument("--long-warmup", type=float, default=0.2)
    parser.add_argument("--long-train-images", type=int, default=None, help="default: all")
    parser.add_argument("--long-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--analyse", action="store_true", help="only analyse the trainings already done")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset, args.data_dir)
    budget = Budget(parse_budget(args.flops_budget), resolution=args.resolution)
    networks = draw_networks(args.space, budget, args.configs, args.draw_seed, data.num_classes)
    setup = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "analyse"}
    setup |= {
        "dataset_identity": data.identity(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    setup_path = args.out / "setup.json"
    if setup_path.exists():
        old = json.loads(setup_path.read_text())
        changed = [k for k in setup if k not in ("out", "bootstrap", "threads") and old.get(k) != setup[k]]
        if changed:
            raise SystemExit(
                f"{args.out} holds a study with other settings ({', '.join(changed)}); use another --out"
            )
    setup_path.write_text(json.dumps(setup, indent=2, default=str) + "\n")
    if not args.analyse:
        measure(args, args.out, networks, data)
    rows = network_rows(networks, args.out, data.num_classes, args.proxy_seeds)
    write_csv(args.out / "configs.csv", rows)
    result = agreement(rows, args.proxy_seeds, args.bootstrap)
    write_csv(
        args.out / "agreement.csv", [{k: v for k, v in r.items() if k != "tau_each_seed"} for r in result]
    )
    (args.out / "agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'predictor':<62} {'n':>3} {'tau':>7} {'95% bootstrap':>18}")
    for r in result:
        print(f"{r['label']:<62} {r['networks']:>3} {r['tau']:>7.3f} [{r['low']:>6.3f}, {r['high']:>6.3f}]")


if __name__ == "__main__":
    main()
