"""Latency tables side by side: every table scored against one measured set of networks.

A table's error in ``bench_latency.py`` mixes the table with the machine of that run: on a
shared VM two runs an hour apart differ by more than two table builds do (the measurement
log in ``reports/latency/measurements.md``). This times the benchmark's evaluation networks
once, in two passes, and then scores any number of tables against the same timings, so an
A/B of two ways of building a table compares the tables alone.

    python benchmarks/bench_latency_ab.py measure --runtime onnxruntime --per-space 10 --out set.json
    python benchmarks/bench_latency_ab.py score set.json A.json B.json [--unblocked]

``measure`` writes each network's config and its median and fastest run in each pass (5
warm-up and 15 timed runs by default, one thread); with ``--channel-multiple M``, the
networks are ``bench_latency.py --channel-multiple M``'s (widths on M, no presets), and
``score`` refuses a table built for another multiple. ``score`` prints, for each table, its
correction, the median and 90th-percentile |predicted / measured - 1| and Kendall τ against
the first pass and against both passes (their geometric mean), the level (the median of
predicted / measured) and that level by space; first, the second pass against the first
(the floor an exact predictor would approach). ``--unblocked`` also scores each table that
has blocked families with them ignored and its correction refitted on its own calibration
networks (what the split on the runtime's blocked alignment buys); ``--refit`` also
scores each table with its calibration rows recomputed by this version of the predictor and
its correction refitted on them (a table built by an older version, with the terms this one
has). A table built on another device or runtime than the set is refused.

    python benchmarks/bench_latency_ab.py profile set.json TABLE

``profile`` (ONNX Runtime on the CPU) runs every network of the set once more under the
runtime's profiler and splits the miss of a table into its parts: the summed in-network
kernel times (each node its fastest run) against the measured medians (how close a
predictor that knew every operator's time inside the network would come), the share of
the layout conversions the runtime inserts between its blocked and plain operators
(``ReorderInput``/``ReorderOutput``, which a table of single operators does not see), and
the table's summed operators against the kernels of the same network (conversions left
out), with how much of the table's miss they explain.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import eval_configs

from rexsearch.cli.common import positive_int
from rexsearch.config import ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.latency import (
    KINDS,
    REORDERS,
    RUNTIMES,
    Correction,
    Environment,
    LatencyTable,
    environment,
    fit_table_correction,
    fold_batchnorm,
    load_table,
    measure_latency,
    node_times,
)
from rexsearch.model import build_model
from rexsearch.stats import quantile

FORMAT = "rexsearch.latency-ab-set/1"


def measure(args: argparse.Namespace) -> int:
    env = environment("cpu", args.runtime, args.threads, 1)
    configs = eval_configs(args.per_space, seed=args.seed, multiple=args.channel_multiple)
    rows = [
        {"name": name, "config": cfg.to_dict(), "median_ms": [], "fastest_ms": []} for name, cfg in configs
    ]
    start = time.perf_counter()
    for p in range(2):
        for row, (_, cfg) in zip(rows, configs, strict=True):
            m = measure_latency(cfg, args.resolution, env=env, warmup=args.warmup, repeats=args.repeats)
            row["median_ms"].append(m.median_ms)
            row["fastest_ms"].append(m.min_ms)
        print(f"pass {p + 1}: {len(rows)} networks, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    out = {
        "format": FORMAT,
        "environment": env.to_dict(),
        "resolution": args.resolution,
        "channel_multiple": args.channel_multiple,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    tmp = Path(f"{args.out}.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}: {len(rows)} networks in {out['seconds']:.0f} s")
    return 0


def refitted(table: LatencyTable, **changes: Any) -> LatencyTable:
    """``table`` with ``changes``, the components of its calibration rows recomputed by this
    version of the predictor and its correction (of the same kind) refitted on them."""
    plain = replace(table, correction=Correction(0.0, 1.0), **changes)
    calibration = []
    if not all("config" in row for row in table.correction.calibration):
        raise UserError("a table whose calibration rows keep no configs cannot be refitted: rebuild it")
    for row in table.correction.calibration:
        c = plain.components(ReXNetConfig.from_dict(row["config"]))
        calibration.append({**row, "summed_ms": sum(c[: len(KINDS)]), "components": list(c)})
    kind = "kinds" if table.correction.kind_slopes else "line"
    return replace(plain, correction=fit_table_correction(calibration, kind))


def unblocked(table: LatencyTable) -> LatencyTable:
    """``table`` with its blocked families (and the layout conversions) ignored, refitted."""
    return refitted(table, blocked_alignment=None)


def _errors(predicted: list[float], measured: list[float]) -> str:
    err = [abs(p / m - 1) for p, m in zip(predicted, measured, strict=True)]
    tau = kendalltau(predicted, measured).statistic
    return f"{statistics.median(err):.1%}, p90 {quantile(err, 0.9):.1%}, tau {tau:.3f}"


def _space(name: str) -> str:
    head, _, tail = name.rpartition("-")
    return head if tail.isdigit() and not name.startswith("rexnet-") else "presets"


def score(args: argparse.Namespace) -> int:
    data, env, configs, first, both = _load_set(args.set)
    rows = data["rows"]
    second = [r["median_ms"][1] for r in rows]
    print(f"{args.set}: {len(rows)} networks on {env.describe()}, measured {data['measured_at']}")
    print(f"  the second pass against the first (the floor): {_errors(second, first)}")
    tables: list[tuple[str, LatencyTable]] = []
    for path in args.tables:
        table = load_table(path)
        table.check_environment(env, f"the table {path}")
        table.check_channel_multiple(data.get("channel_multiple"), f"the table {path}")
        tables.append((path, table))
        if args.refit:
            tables.append((f"{path}, refitted by this version", refitted(table)))
        if args.unblocked and table.blocked_alignment:
            tables.append((f"{path}, blocked families ignored", unblocked(table)))
    for label, table in tables:
        predicted = [table.predict(c, data["resolution"]) for c in configs]
        level = [p / m for p, m in zip(predicted, both, strict=True)]
        by_space: dict[str, list[float]] = {}
        for row, ratio in zip(rows, level, strict=True):
            by_space.setdefault(_space(row["name"]), []).append(ratio)
        print(f"{label}")
        print(f"  correction: {table.correction.describe()}")
        print(f"  against the first pass: {_errors(predicted, first)}")
        print(f"  against both passes: {_errors(predicted, both)}; level {statistics.median(level):.3f}")
        print(
            "  level by space: "
            + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in sorted(by_space.items()))
        )
    return 0


def _load_set(path: str) -> tuple[dict, Environment, list[ReXNetConfig], list[float], list[float]]:
    """A measured set: its data, environment, configs, first-pass medians and both passes' geometric mean."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise UserError(f"{path} is not a set written by `bench_latency_ab.py measure`")
    rows = data["rows"]
    first = [r["median_ms"][0] for r in rows]
    both = [math.sqrt(r["median_ms"][0] * r["median_ms"][1]) for r in rows]
    configs = [ReXNetConfig.from_dict(r["config"]) for r in rows]
    return data, Environment.from_dict(data["environment"]), configs, first, both


def _spread(values: list[float]) -> str:
    low, high = quantile(values, 0.1), quantile(values, 0.9)
    return f"median {statistics.median(values):.3f} (p10-p90 {low:.3f}-{high:.3f})"


def profile(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    data, env, configs, _, both = _load_set(args.set)
    if env.runtime != "onnxruntime" or env.device != "cpu":
        raise UserError(
            f"profile reads ONNX Runtime's CPU profiler; {args.set} was measured on {env.describe()}"
        )
    table = load_table(args.table)
    table.check_environment(env, f"the table {args.table}")
    names = [r["name"] for r in data["rows"]]
    kernels, reorders, summed, predicted = [], [], [], []
    start = time.perf_counter()
    for config in configs:
        torch.manual_seed(0)
        model = fold_batchnorm(build_model(config))
        x = torch.randn(env.batch, 3, data["resolution"], data["resolution"])
        nodes = node_times(model, (x,), env, args.warmup, args.repeats)
        reorders.append(sum(ms for kind, ms in nodes if kind in REORDERS))
        kernels.append(sum(ms for kind, ms in nodes if kind not in REORDERS))
        summed.append(table.summed_ms(config, data["resolution"]))
        predicted.append(table.predict(config, data["resolution"]))
    seconds = time.perf_counter() - start
    print(f"{args.set}: {len(names)} networks profiled in {seconds:.0f} s; table {args.table}")
    profiled = [k + r for k, r in zip(kernels, reorders, strict=True)]
    level = statistics.median(p / m for p, m in zip(profiled, both, strict=True))
    print(f"  summed in-network nodes against both passes: {_errors(profiled, both)}; level {level:.3f}")
    print(f"  the same with its level divided out: {_errors([p / level for p in profiled], both)}")
    share = [r / p for r, p in zip(reorders, profiled, strict=True)]
    print(f"  layout conversions, share of the network: {_spread(share)}")
    by_space: dict[str, list[float]] = {}
    for name, v in zip(names, share, strict=True):
        by_space.setdefault(_space(name), []).append(v)
    spaces = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in sorted(by_space.items()))
    print(f"    by space: {spaces}")
    ratio = [s / k for s, k in zip(summed, kernels, strict=True)]
    print(f"  the table's summed operators / in-network kernels: {_spread(ratio)}")
    miss = np.log(np.array(predicted) / np.array(both))
    for label, v in (("log(the table / the kernels)", np.log(ratio)), ("the conversions' share", share)):
        r = float(np.corrcoef(v, miss)[0, 1])
        print(f"  correlation of log(predicted / measured) with {label}: {r:+.2f}")
    print(f"  the table against both passes: {_errors(predicted, both)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time the evaluation networks in two passes")
    m.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    m.add_argument("--threads", type=positive_int, default=1)
    m.add_argument("--per-space", type=positive_int, default=10, help="random configs per shipped space")
    m.add_argument("--seed", type=int, default=0, help="the evaluation networks' seed (bench_latency's is 0)")
    m.add_argument("--resolution", type=positive_int, default=224)
    m.add_argument(
        "--channel-multiple",
        type=positive_int,
        default=None,
        metavar="M",
        help="networks with widths on multiples of M (no presets), as bench_latency's --channel-multiple",
    )
    m.add_argument("--warmup", type=positive_int, default=5)
    m.add_argument("--repeats", type=positive_int, default=15)
    m.add_argument("--out", required=True, help="the set's JSON file")
    s = sub.add_parser("score", help="score tables against a measured set")
    s.add_argument("set", help="a file written by `measure`")
    s.add_argument("tables", nargs="+", help="latency table files")
    s.add_argument("--unblocked", action="store_true", help="also score tables with blocked families ignored")
    s.add_argument(
        "--refit",
        action="store_true",
        help="also score tables with their correction refitted by this version",
    )
    f = sub.add_parser(
        "profile", help="split a table's miss into kernels and layout conversions (ONNX Runtime)"
    )
    f.add_argument("set", help="a file written by `measure`")
    f.add_argument("table", help="a latency table file")
    f.add_argument("--warmup", type=positive_int, default=3)
    f.add_argument("--repeats", type=positive_int, default=10)
    args = ap.parse_args()
    try:
        return {"measure": measure, "score": score, "profile": profile}[args.command](args)
    except (UserError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
