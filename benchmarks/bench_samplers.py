"""Does the search beat random sampling? Searches with ``--sampler tpe`` against ``--sampler random``.

Run (resumable: a finished step is skipped, an interrupted search is resumed):

    python benchmarks/bench_samplers.py --out samplers              # measure, then tabulate
    python benchmarks/bench_samplers.py --out samplers --analyse    # tabulate what is there

For each sampler and seed, one ``rexsearch run`` with the same data set, budget, space, fidelity,
objectives (``accuracy`` by default, the product's default) and number of trials (the command
of ``reports/fashion-mnist/`` by default) into
``OUT/<sampler>-seed<S>``; then ``rexsearch confirm RUN --top 1 --seeds K`` (the search's best
and the baselines with K fresh seeds); then, with ``--long-epochs``, ``rexsearch train RUN
--trial N`` of each search's best on the whole training set (top-1 on the test set). Each step
runs the CLI as a user would, in a child process, one at a time.

Writes ``OUT/samplers.csv`` (one row per search: its best trial, the best's proxy accuracy in
the search, its confirmed mean and std, its long-training accuracy, the rexnet-linear
baseline's confirmed mean) and prints the table with each sampler's mean over seeds and the
Welch interval of the difference of means (TPE minus random) of the confirmed accuracies.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rexsearch.results import RunResults
from rexsearch.rundir import RUN_JSON
from rexsearch.stats import difference, mean, sample_std

CLI = [sys.executable, "-m", "rexsearch.cli"]


def cli(*args: str) -> None:
    print("+ rexsearch " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([*CLI, *args], check=True)


def search(args: argparse.Namespace, sampler: str, seed: int) -> Path:
    run_dir = args.out / f"{sampler}-seed{seed}"
    if not (run_dir / RUN_JSON).exists():
        cli(
            "run",
            *("--dataset", args.dataset, "--flops-budget", args.flops_budget, "--space", args.space),
            *("--objectives", args.objectives, "--trials", str(args.trials)),
            *("--epochs", str(args.epochs)),
            *("--train-images", str(args.train_images), "--val-images", str(args.val_images)),
            *("--seed", str(seed), "--sampler", sampler, "--run-dir", str(run_dir), "--quiet"),
        )
    elif finished(run_dir) < args.trials:
        cli("resume", str(run_dir), "--quiet")
    results = RunResults.load(run_dir)
    if len(results.confirmation.values(best_label(results))) < args.confirm_seeds:
        cli("confirm", str(run_dir), "--top", "1", "--seeds", str(args.confirm_seeds), "--quiet")
    return run_dir


def best_label(results: RunResults) -> str:
    """The confirmation's label of the search's best: ``trial-N``, or a baseline's name."""
    number = results.best()[0].number
    table = results.table
    baseline = str(table.loc[table["number"] == number, "baseline"].iloc[0])
    return baseline or f"trial-{number}"


def finished(run_dir: Path) -> int:
    """Trials that ended, the baselines included (``--trials`` counts them too)."""
    table = RunResults.load(run_dir).table
    return int((table["state"] != "RUNNING").sum())


def long_training(args: argparse.Namespace, run_dir: Path, trial: int) -> float | None:
    if not args.long_epochs:
        return None
    out = run_dir / "train" / f"long-trial-{trial}"
    metrics = out / "metrics.json"
    if not (metrics.exists() and json.loads(metrics.read_text()).get("finished")):
        cli(
            "train",
            *(str(run_dir), "--trial", str(trial), "--epochs", str(args.long_epochs)),
            *("--warmup-epochs", str(args.long_warmup), "--seed", "1", "--out", str(out), "--quiet"),
        )
    return float(json.loads(metrics.read_text())["final_test_top1"])


def row(args: argparse.Namespace, sampler: str, seed: int, run_dir: Path) -> dict[str, Any]:
    results = RunResults.load(run_dir)
    number = results.best()[0].number
    table = results.table
    best = table[table["number"] == number].iloc[0]
    confirmed = results.confirmation
    mine = confirmed.values(best_label(results))
    linear = confirmed.values("rexnet-linear")
    return {
        "sampler": sampler,
        "seed": seed,
        "best_trial": number,
        "best_label": best_label(results),
        "best_macs": int(best["macs"]),
        "best_params": int(best["params"]),
        "search_accuracy": float(best["value_accuracy"]),
        "confirmed_mean": mean(mine),
        "confirmed_std": sample_std(mine),
        "confirmed_seeds": len(mine),
        "confirmed_values": ";".join(f"{v:.4f}" for v in mine),
        "rexnet_linear_mean": mean(linear),
        "long_accuracy": long_training(args, run_dir, number),
        **search_profile(table),
        "search_minutes": search_minutes(results.trials),
        "run_dir": str(run_dir),
    }


def search_minutes(trials: Any) -> float | None:
    """Minutes from the first trial's start to the last one's end (the search's trials only)."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    return round((max(ends) - min(starts)).total_seconds() / 60, 1) if starts and ends else None


#: Searched-trial counts at which each search's best-so-far proxy accuracy is recorded.
CHECKPOINTS = (10, 20, 30)


def searched(table: Any) -> Any:
    """The complete searched trials (no baselines) in the order they were started."""
    done = table[(table["baseline"] == "") & (table["state"] == "COMPLETE")]
    return done.sort_values("number")


def search_profile(table: Any) -> dict[str, Any]:
    """How the search went, beyond its best: the best proxy accuracy after the first N searched
    trials, the mean of its top 5 and the mean of all its searched trials."""
    acc = searched(table)["value_accuracy"].astype(float).tolist()
    out: dict[str, Any] = {f"best_after_{n}": max(acc[:n]) if len(acc) >= n else None for n in CHECKPOINTS}
    out["top5_mean"] = mean(sorted(acc)[-5:]) if len(acc) >= 5 else None
    out["searched_mean"] = mean(acc) if acc else None
    out["searched_trials"] = len(acc)
    return out


def shared_start(out: Path, samplers: list[str], seed: int) -> int:
    """How many searched trials, from the first, proposed the same config in every sampler's
    search of ``seed`` (TPE starts with random draws from the same seeded generator)."""
    orders = []
    for sampler in samplers:
        run_dir = out / f"{sampler}-seed{seed}"
        if not (run_dir / RUN_JSON).exists():
            return 0
        orders.append(searched(RunResults.load(run_dir).table)["config_hash"].tolist())
    n = 0
    while all(len(o) > n for o in orders) and len({o[n] for o in orders}) == 1:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("samplers"))
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--flops-budget", default="100M")
    parser.add_argument("--space", default="rexnet")
    parser.add_argument("--objectives", default="accuracy", help="the searches' --objectives")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--confirm-seeds", type=int, default=3)
    parser.add_argument("--long-epochs", type=int, default=0, help="0: no long training")
    parser.add_argument("--long-warmup", type=float, default=0.2)
    parser.add_argument("--analyse", action="store_true", help="only tabulate the searches already done")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    setup = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "analyse"}
    if not args.analyse:
        (args.out / "setup.json").write_text(json.dumps(setup, indent=2) + "\n")

    rows = []
    for seed in args.seeds:  # seed-major: an interrupted study has both samplers at the first seeds
        for sampler in args.samplers:
            run_dir = args.out / f"{sampler}-seed{seed}"
            if not args.analyse:
                search(args, sampler, seed)
            if not (run_dir / RUN_JSON).exists():
                continue
            if finished(run_dir) < args.trials:  # --analyse while a search runs: only whole ones
                print(f"{run_dir.name}: {finished(run_dir)} of {args.trials} trials so far", file=sys.stderr)
                continue
            rows.append(row(args, sampler, seed, run_dir))
    if not rows:
        raise SystemExit(f"no search in {args.out} yet")
    with (args.out / "samplers.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(
            f"{r['sampler']:<7} seed {r['seed']}: {r['best_label']}, search {100 * r['search_accuracy']:.2f}%"
            f", confirmed {100 * r['confirmed_mean']:.2f}% ± {100 * r['confirmed_std']:.2f} "
            f"({r['confirmed_seeds']} seeds), rexnet-linear {100 * r['rexnet_linear_mean']:.2f}%"
            + (f", long {100 * r['long_accuracy']:.2f}%" if r["long_accuracy"] is not None else "")
        )
    for seed in args.seeds:
        n = shared_start(args.out, args.samplers, seed)
        print(f"seed {seed}: the searches' first {n} searched trials proposed the same configs")
        pair = [r for s in args.samplers for r in rows if r["sampler"] == s and r["seed"] == seed]
        if len(args.samplers) == 2 and len(pair) == 2 and all(r["confirmed_seeds"] >= 2 for r in pair):
            a, b = ([float(v) for v in r["confirmed_values"].split(";")] for r in pair)
            d = difference(a, b)
            print(
                f"seed {seed}: {args.samplers[0]}'s best - {args.samplers[1]}'s best: {100 * d.diff:+.2f} "
                f"points, 95% Welch [{100 * d.low:+.2f}, {100 * d.high:+.2f}] over the confirmation seeds"
            )
    for key in (*(f"best_after_{n}" for n in CHECKPOINTS), "top5_mean", "searched_mean"):
        means = {}
        for s in args.samplers:
            values = [r[key] for r in rows if r["sampler"] == s and r[key] is not None]
            means[s] = f"{100 * mean(values):.2f}% ({len(values)})" if values else "n/a"
        print(f"{key}: " + ", ".join(f"{s} {v}" for s, v in means.items()))
    by = {s: [r["confirmed_mean"] for r in rows if r["sampler"] == s] for s in args.samplers}
    for s, values in by.items():
        print(f"{s}: confirmed best {100 * mean(values):.2f}% mean over {len(values)} searches")
    if len(args.samplers) == 2 and all(len(v) >= 2 for v in by.values()):
        d = difference(*by.values())
        print(
            f"{args.samplers[0]} - {args.samplers[1]}: {100 * d.diff:+.2f} points, 95% Welch "
            f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]: {d.verdict}"
        )


if __name__ == "__main__":
    main()
