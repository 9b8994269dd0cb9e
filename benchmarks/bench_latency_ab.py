"""Latency tables side by side: every table scored against one measured set of networks.

A table's error in ``bench_latency.py`` mixes the table with the machine of that run: on a
shared VM two runs an hour apart differ by more than two table builds do (the measurement
log in ``reports/latency/measurements.md``). This times the benchmark's evaluation networks
once, in two passes, and then scores any number of tables against the same timings, so an
A/B of two ways of building a table compares the tables alone.

    python benchmarks/bench_latency_ab.py measure --runtime onnxruntime --per-space 10 --out set.json
    python benchmarks/bench_latency_ab.py score set.json A.json B.json [--unblocked]

``measure`` writes each network's config and its median and fastest run in each pass (5
warm-up and 15 timed runs by default, one thread). ``score`` prints, for each table, its
correction, the median and 90th-percentile |predicted / measured - 1| and Kendall τ against
the first pass and against both passes (their geometric mean), the level (the median of
predicted / measured) and that level by space; first, the second pass against the first
(the floor an exact predictor would approach). ``--unblocked`` also scores each table that
has blocked families with them ignored and its correction refitted on its own calibration
networks (what the split on the runtime's blocked alignment buys). A table built on
another device or runtime than the set is refused.
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

from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import eval_configs, quantile

from rexsearch.cli.common import positive_int
from rexsearch.config import ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.latency import (
    KINDS,
    RUNTIMES,
    Correction,
    Environment,
    LatencyTable,
    environment,
    fit_table_correction,
    load_table,
    measure_latency,
)

FORMAT = "rexsearch.latency-ab-set/1"


def measure(args: argparse.Namespace) -> int:
    env = environment("cpu", args.runtime, args.threads, 1)
    configs = eval_configs(args.per_space, seed=args.seed)
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


def unblocked(table: LatencyTable) -> LatencyTable:
    """``table`` with its blocked families ignored, the correction refitted on its calibration rows."""
    plain = replace(table, blocked_alignment=None, correction=Correction(0.0, 1.0))
    calibration = []
    for row in table.correction.calibration:
        c = plain.components(ReXNetConfig.from_dict(row["config"]))
        calibration.append({**row, "summed_ms": sum(c[: len(KINDS)]), "components": list(c)})
    return replace(plain, correction=fit_table_correction(calibration))


def _errors(predicted: list[float], measured: list[float]) -> str:
    err = [abs(p / m - 1) for p, m in zip(predicted, measured, strict=True)]
    tau = kendalltau(predicted, measured).statistic
    return f"{statistics.median(err):.1%}, p90 {quantile(err, 0.9):.1%}, tau {tau:.3f}"


def _space(name: str) -> str:
    head, _, tail = name.rpartition("-")
    return head if tail.isdigit() and not name.startswith("rexnet-") else "presets"


def score(args: argparse.Namespace) -> int:
    data = json.loads(Path(args.set).read_text())
    if data.get("format") != FORMAT:
        raise UserError(f"{args.set} is not a set written by `bench_latency_ab.py measure`")
    env = Environment.from_dict(data["environment"])
    rows = data["rows"]
    configs = [ReXNetConfig.from_dict(r["config"]) for r in rows]
    first = [r["median_ms"][0] for r in rows]
    second = [r["median_ms"][1] for r in rows]
    both = [math.sqrt(a * b) for a, b in zip(first, second, strict=True)]
    print(f"{args.set}: {len(rows)} networks on {env.describe()}, measured {data['measured_at']}")
    print(f"  the second pass against the first (the floor): {_errors(second, first)}")
    tables: list[tuple[str, LatencyTable]] = []
    for path in args.tables:
        table = load_table(path)
        table.check_environment(env, f"the table {path}")
        tables.append((path, table))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time the evaluation networks in two passes")
    m.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    m.add_argument("--threads", type=positive_int, default=1)
    m.add_argument("--per-space", type=positive_int, default=10, help="random configs per shipped space")
    m.add_argument("--seed", type=int, default=0, help="the evaluation networks' seed (bench_latency's is 0)")
    m.add_argument("--resolution", type=positive_int, default=224)
    m.add_argument("--warmup", type=positive_int, default=5)
    m.add_argument("--repeats", type=positive_int, default=15)
    m.add_argument("--out", required=True, help="the set's JSON file")
    s = sub.add_parser("score", help="score tables against a measured set")
    s.add_argument("set", help="a file written by `measure`")
    s.add_argument("tables", nargs="+", help="latency table files")
    s.add_argument("--unblocked", action="store_true", help="also score tables with blocked families ignored")
    args = ap.parse_args()
    try:
        return measure(args) if args.command == "measure" else score(args)
    except (UserError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
