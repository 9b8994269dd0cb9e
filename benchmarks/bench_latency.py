"""Latency predictor and latency budgets on this machine (numbers for the README).

For each runtime (torch and ONNX Runtime on the CPU, and CUDA when a GPU is present):

1. the time to build a latency table (each in a fresh process, as ``rexsearch latency-table
   build`` does before a search; ``--build-here`` builds it in the benchmark's own);
2. predicted vs measured end-to-end latency on the presets and random configs of every
   shipped space (50 each): median and 90th-percentile relative error, Kendall's tau; the
   same relative to rexnet-1.0 measured just before each network (the machine's drift
   cancelled), the calibration networks measured again after the evaluation (the drift), and
   every evaluation network measured again in a second pass (the measurement's own
   repeatability: with independent noise in the passes, an exact predictor misses one
   pass by about 1/sqrt(2) of what the passes miss each other by);
3. decoding candidates of ``rexnet.yaml`` under a latency budget (rexnet-1.0's predicted
   latency): time, share within the predicted budget, share within it when measured on a
   sample (with no margin, a 5% margin, ``--latency-margin auto``'s and ``measure``'s), with the share's
   exact 95% interval and whether it shows the goal of 95% (met, missed, or within noise of
   it: all of 72 measured within the budget are needed to show it);
4. rexnet-1.0 against the same schedule with widths rounded to multiples of 8, and against
   the linear ReXNet solved to the same MACs budget with widths multiples of 8.

    python benchmarks/bench_latency.py            # the full run (tens of minutes on 2 cores)
    python benchmarks/bench_latency.py --quick    # a check that it works (a few minutes)

Timings on a shared machine are noisy: say whether other jobs ran when quoting them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from scipy.stats import kendalltau

from rexsearch.bench import share_verdict
from rexsearch.cli.common import positive_int
from rexsearch.cost import count_cost
from rexsearch.latency import (
    CORRECTIONS,
    MEASURED_MARGIN_CANDIDATES,
    MIN_AUTO_MARGIN_CALIBRATION,
    LatencyTableError,
    auto_margin,
    build_table,
    check_drift,
    environment,
    fit_table_correction,
    load_table,
    measure_latency,
    measured_margin,
)
from rexsearch.principles import PRESETS, get_preset, linear_schedule
from rexsearch.space import (
    SPACES_DIR,
    Budget,
    RandomTrial,
    baseline_candidate,
    calibration_shapes,
    load_space,
)
from rexsearch.stats import quantile, share_interval

#: Measured just before every evaluation network: how fast the machine is at that moment.
REFERENCE = "rexnet-1.0"
#: Calibration networks timed again after the evaluation (``rexsearch.latency.check_drift``).
DRIFT_CHECKED = 12
#: The issue's goal for the decoded candidates measured within the budget.
WITHIN_GOAL = 0.95


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _build_and_save(path: str, kwargs: dict) -> None:
    build_table(**kwargs).save(path)


def build_elsewhere(path: Path, **kwargs: object) -> None:
    """Build a table in a fresh process and save it to ``path``, as ``rexsearch latency-table
    build`` does before a search: what the build leaves in its process does not time the
    evaluation."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        pool.submit(_build_and_save, str(path), kwargs).result()


def eval_configs(per_space: int, seed: int = 0, multiple: int | None = None) -> list[tuple[str, object]]:
    """Presets plus ``per_space`` random configs of every shipped space at random MACs budgets
    (with ``multiple``: widths on it, and no presets, whose widths are not)."""
    rng = random.Random(seed)
    out = [] if multiple else [(name, p.config()) for name, p in PRESETS.items()]
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        space = load_space(path)
        got = 0
        while got < per_space:
            budget = Budget(
                round(math.exp(rng.uniform(math.log(100e6), math.log(1.2e9)))), channel_multiple=multiple
            )
            try:
                cand = space.decode(space.suggest(RandomTrial(rng)), budget)
            except Exception:
                continue
            got += 1
            out.append((f"{space.name}-{got}", cand.config))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="coarse tables, few configs: a check that it runs")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: steadier on a shared VM)")
    ap.add_argument(
        "--runtimes", default="torch,onnxruntime", help="comma-separated (default torch,onnxruntime)"
    )
    ap.add_argument("--tables", default="/tmp/rexsearch-bench-latency", help="where the tables are written")
    ap.add_argument("--json", metavar="FILE", help="also write every number as JSON")
    ap.add_argument(
        "--reuse-tables",
        action="store_true",
        help="load a runtime's table from --tables when it is there instead of building it again",
    )
    ap.add_argument(
        "--correction",
        choices=CORRECTIONS,
        default="line",
        help="the table's correction (default line); the other is reported beside it",
    )
    ap.add_argument(
        "--per-space", type=positive_int, help="random configs per shipped space (default 50; 5 with --quick)"
    )
    ap.add_argument(
        "--channel-multiple",
        type=positive_int,
        metavar="M",
        help="tables built with --channel-multiple M, evaluation networks and decoded candidates on "
        "multiples of M, the reference rexnet-1.0 rounded to M",
    )
    ap.add_argument(
        "--plain-table",
        action="store_true",
        help="with --channel-multiple: predict with a table built without it (the comparison)",
    )
    ap.add_argument(
        "--measured",
        type=positive_int,
        help="decoded candidates measured under each margin (default 20; 5 with --quick)",
    )
    ap.add_argument(
        "--build-here",
        action="store_true",
        help="build the tables in this process (default: each in a fresh process, as `rexsearch "
        "latency-table build` does before a search)",
    )
    ap.add_argument(
        "--no-retest",
        dest="retest",
        action="store_false",
        help="skip the second pass over the evaluation networks (the measurement's own repeatability)",
    )
    args = ap.parse_args()
    quick = args.quick
    multiple = args.channel_multiple if args.channel_multiple and args.channel_multiple > 1 else None
    if args.plain_table and not multiple:
        ap.error("--plain-table compares tables on --channel-multiple M (M > 1) networks; give one")
    table_multiple = None if args.plain_table else multiple
    reference_name = f"{REFERENCE} rounded to {multiple}" if multiple else REFERENCE
    began = time.perf_counter()
    per_space = args.per_space or (5 if quick else 50)
    decodes = 100 if quick else 1000
    sample_measured = args.measured or (5 if quick else 20)
    warmup, repeats = (2, 5) if quick else (5, 15)
    Path(args.tables).mkdir(parents=True, exist_ok=True)
    results: dict = {
        "quick": quick,
        "threads": args.threads,
        "channel_multiple": multiple,
        "tables_built": "reused where found"
        if args.reuse_tables
        else "in the benchmark's process"
        if args.build_here
        else "each in a fresh process",
        "table_channel_multiple": table_multiple,
        "load_before": os.getloadavg(),
        "runtimes": {},
    }
    targets = [("cpu", r) for r in args.runtimes.split(",")]
    try:
        environment("cuda", "torch")
        targets.append(("cuda", "torch"))
    except Exception:
        log("no CUDA device: CPU only")
    configs = eval_configs(per_space, multiple=multiple)
    log(f"{len(configs)} evaluation configs")
    for device, runtime in targets:
        tag = f"{runtime}-{device}"
        env = environment(device, runtime, args.threads)
        path = Path(args.tables) / (f"{tag}-m{table_multiple}.json" if table_multiple else f"{tag}.json")
        if args.reuse_tables and path.is_file():
            log(f"== {tag}: reusing {path}; load average {os.getloadavg()[0]:.1f}")
            table = load_table(path, expect=env)
            table = replace(
                table, correction=fit_table_correction(table.correction.calibration, args.correction)
            )
            build_s = table.build_seconds
        else:
            log(f"== {tag}: building the table on {env.describe()}; load average {os.getloadavg()[0]:.1f}")
            settings = {
                "device": device,
                "runtime": runtime,
                "threads": args.threads,
                "shapes": calibration_shapes(per_space=2) if quick else None,
                "points": 4 if quick else 6,
                "repeats": 3 if quick else 7,
                "correction": args.correction,
                "channel_multiple": table_multiple,
            }
            if args.build_here:
                build_table(**settings).save(path)
            else:
                build_elsewhere(path, **settings)
            table = load_table(path, expect=env)
            build_s = table.build_seconds  # the build itself, not the fresh process's start
        # The other correction (per kind against one line) fitted on the same calibration
        # networks: what it changes, on the same measurements.
        cal = table.correction.calibration
        other_kind = "line" if table.correction.kind_slopes else "kinds"
        other = fit_table_correction(cal, other_kind)
        rows = []
        reference = linear_schedule(1.0, ch_div=multiple) if multiple else get_preset(REFERENCE)
        reference_predicted = table.predict(reference)
        for i, (name, cfg) in enumerate(configs):
            # the reference network just before: its time tracks the machine's speed at that moment
            ref = measure_latency(reference, env=env, warmup=warmup, repeats=repeats)
            lat = measure_latency(cfg, env=env, warmup=warmup, repeats=repeats)
            parts = table.components(cfg)
            rows.append(
                {
                    "name": name,
                    "reference_ms": ref.median_ms,
                    "macs": count_cost(cfg).macs,
                    "measured_ms": lat.median_ms,
                    "fastest_ms": lat.min_ms,
                    "predicted_ms": table.predict(cfg),
                    "predicted_other_ms": other.apply(parts),
                    "components": list(parts),
                    "seconds": time.perf_counter() - began,
                }
            )
            if (i + 1) % 10 == 0:
                log(f"  measured {i + 1}/{len(configs)}")
        # The measurement against itself: every network timed again, in a second pass, the same
        # way. With independent noise in the passes, an exact predictor misses one pass by about
        # 1/sqrt(2) of what the passes miss each other by, and ranks it no better than they agree.
        if args.retest:
            for i, ((_, cfg), row) in enumerate(zip(configs, rows, strict=True)):
                lat = measure_latency(cfg, env=env, warmup=warmup, repeats=repeats)
                row["retest_ms"], row["retest_fastest_ms"] = lat.median_ms, lat.min_ms
                if (i + 1) % 10 == 0:
                    log(f"  measured again {i + 1}/{len(configs)}")
        # The machine against itself: calibration networks measured again after the evaluation,
        # against their times at the table's build (drift of the device, not the predictor's error).
        drift = []
        if not quick and not args.reuse_tables:
            drift = [
                {"name": r["name"], "fastest_ratio": r["ratio"], "median_ratio": r.get("median_ratio")}
                for r in check_drift(table, networks=DRIFT_CHECKED).networks
            ]
            medians = [d["median_ratio"] for d in drift if d["median_ratio"] is not None]
            log(
                "  drift: calibration networks now / at the build: fastest "
                f"{statistics.median(d['fastest_ratio'] for d in drift):.3f}, median "
                f"{statistics.median(medians) if medians else math.nan:.3f} ({len(drift)} networks)"
            )
        errors = [abs(r["predicted_ms"] / r["measured_ms"] - 1) for r in rows]
        # Against the reference measured just before each network: the predictor's error with the
        # machine's drift (minutes-long changes of its speed) cancelled.
        rel_pred = [r["predicted_ms"] / reference_predicted for r in rows]
        rel_meas = [r["measured_ms"] / r["reference_ms"] for r in rows]
        errors_rel = [abs(p / m - 1) for p, m in zip(rel_pred, rel_meas, strict=True)]
        tau_rel = kendalltau(rel_pred, rel_meas).statistic
        ref_times = [r["reference_ms"] for r in rows]
        errors_fast = [abs(r["predicted_ms"] / r["fastest_ms"] - 1) for r in rows]
        predicted = [r["predicted_ms"] for r in rows]
        tau = kendalltau(predicted, [r["measured_ms"] for r in rows]).statistic
        tau_fast = kendalltau(predicted, [r["fastest_ms"] for r in rows]).statistic
        tau_macs = kendalltau([r["macs"] for r in rows], [r["measured_ms"] for r in rows]).statistic
        errors_other = [abs(r["predicted_other_ms"] / r["measured_ms"] - 1) for r in rows]
        tau_other = kendalltau(
            [r["predicted_other_ms"] for r in rows], [r["measured_ms"] for r in rows]
        ).statistic
        out = {
            "environment": env.to_dict(),
            "table_build_s": build_s,
            "table_operators": sum(len(f.ms) for f in table.families.values()),
            "correction": table.correction.describe(),
            "calibration_networks": len(cal),
            "configs": len(rows),
            "median_rel_error": statistics.median(errors),
            "p90_rel_error": quantile(errors, 0.9),
            "kendall_tau": tau,
            "kendall_tau_macs": tau_macs,
            "other_correction": {
                "kind": other_kind,
                "correction": other.describe(),
                "median_rel_error": statistics.median(errors_other),
                "p90_rel_error": quantile(errors_other, 0.9),
                "kendall_tau": tau_other,
            },
            "vs_reference": {
                "reference": reference_name,
                "median_rel_error": statistics.median(errors_rel),
                "p90_rel_error": quantile(errors_rel, 0.9),
                "kendall_tau": tau_rel,
                "reference_ms_range": [min(ref_times), statistics.median(ref_times), max(ref_times)],
            },
            "vs_fastest": {
                "median_rel_error": statistics.median(errors_fast),
                "p90_rel_error": quantile(errors_fast, 0.9),
                "kendall_tau": tau_fast,
            },
            "rows": rows,
            "drift": drift,
        }
        if args.retest:
            first = [r["measured_ms"] for r in rows]
            again = [r["retest_ms"] for r in rows]
            floor = [abs(a / m - 1) for a, m in zip(again, first, strict=True)]
            floor_fast = [abs(r["retest_fastest_ms"] / r["fastest_ms"] - 1) for r in rows]
            # against both passes' geometric mean: half the measurement noise of either
            both = [math.sqrt(a * m) for a, m in zip(again, first, strict=True)]
            errors_both = [abs(r["predicted_ms"] / b - 1) for r, b in zip(rows, both, strict=True)]
            errors_again = [abs(r["predicted_ms"] / a - 1) for r, a in zip(rows, again, strict=True)]
            out["retest"] = {
                "median_rel_error": statistics.median(floor),
                "p90_rel_error": quantile(floor, 0.9),
                "kendall_tau": kendalltau(first, again).statistic,
                "fastest_median_rel_error": statistics.median(floor_fast),
                "fastest_kendall_tau": kendalltau(
                    [r["fastest_ms"] for r in rows], [r["retest_fastest_ms"] for r in rows]
                ).statistic,
                "second_over_first_median": statistics.median(
                    a / m for a, m in zip(again, first, strict=True)
                ),
                "predictor_vs_second": {
                    "median_rel_error": statistics.median(errors_again),
                    "kendall_tau": kendalltau(predicted, again).statistic,
                },
                "predictor_vs_both": {
                    "median_rel_error": statistics.median(errors_both),
                    "p90_rel_error": quantile(errors_both, 0.9),
                    "kendall_tau": kendalltau(predicted, both).statistic,
                },
            }
            rt = out["retest"]
            log(
                f"  the measurement against itself (a second pass): median {rt['median_rel_error']:.1%}, "
                f"p90 {rt['p90_rel_error']:.1%}, tau {rt['kendall_tau']:.3f} (fastest runs: "
                f"{rt['fastest_median_rel_error']:.1%}, tau {rt['fastest_kendall_tau']:.3f}; second / first "
                f"{rt['second_over_first_median']:.3f}); the predictor against the second pass: median "
                f"{rt['predictor_vs_second']['median_rel_error']:.1%}, tau "
                f"{rt['predictor_vs_second']['kendall_tau']:.3f}; against both passes: median "
                f"{rt['predictor_vs_both']['median_rel_error']:.1%}, tau "
                f"{rt['predictor_vs_both']['kendall_tau']:.3f}"
            )
        # --latency-margin auto against the evaluation networks: the share whose measured median
        # stays within their prediction scaled up by the margin (a candidate solved to the budget
        # less the margin is then within the budget).
        try:
            auto = auto_margin(table)
        except LatencyTableError:
            auto = None
        if auto is not None:
            covered = sum(r["measured_ms"] * (1 - auto) <= r["predicted_ms"] for r in rows) / len(rows)
            out["auto_margin"] = {"margin": auto, "evaluation_within": covered}
            log(f"  --latency-margin auto: {auto:.1%}; {covered:.0%} of the evaluation networks within it")
        log(
            f"  error vs median: median {out['median_rel_error']:.1%}, p90 {out['p90_rel_error']:.1%}, "
            f"tau {tau:.3f} (MACs alone: tau {tau_macs:.3f}); vs fastest run: median "
            f"{statistics.median(errors_fast):.1%}, p90 {quantile(errors_fast, 0.9):.1%}, "
            f"tau {tau_fast:.3f}; table {build_s:.0f} s"
        )
        log(
            f"  relative to {reference_name} measured just before each network: median "
            f"{statistics.median(errors_rel):.1%}, p90 {quantile(errors_rel, 0.9):.1%}, tau {tau_rel:.3f}; "
            f"{reference_name} itself {min(ref_times):.2f}-{max(ref_times):.2f} ms over the run "
            f"(median {statistics.median(ref_times):.2f}, predicted {reference_predicted:.2f})"
        )
        log(
            f"  {other_kind} correction instead: median {statistics.median(errors_other):.1%}, "
            f"p90 {quantile(errors_other, 0.9):.1%}, tau {tau_other:.3f}"
        )

        # Decoding under a latency budget.
        limit = table.predict(reference)
        space = load_space("rexnet")
        margins = [("0", 0.0), ("0.05", 0.05)] + ([] if auto is None else [("auto", auto)])
        # --latency-margin measure: the space's own candidates at the budget, timed now (other
        # draws than the candidates measured below)
        found = measured_margin(
            space,
            Budget(latency_ms=limit, latency_table=table, channel_multiple=multiple),
            candidates=MEASURED_MARGIN_CANDIDATES if not quick else MIN_AUTO_MARGIN_CALIBRATION,
            seed=11,
        )
        out["measured_margin"] = {
            "margin": found.margin,
            "ratios": list(found.ratios),
            "seconds": found.seconds,
        }
        log(f"  {found.describe()}")
        margins.append(("measure", found.margin))
        for label, margin in margins:
            budget = Budget(
                latency_ms=limit, latency_table=table, latency_margin=margin, channel_multiple=multiple
            )
            rng = random.Random(7)
            draws = [space.suggest(RandomTrial(rng)) for _ in range(decodes)]
            start = time.perf_counter()
            cands = []
            for values in draws:
                try:
                    cands.append(space.decode(values, budget))
                except Exception:
                    continue
            decode_s = time.perf_counter() - start
            inside = sum(c.latency_ms <= limit for c in cands) / len(cands)
            sample = random.Random(1).sample(cands, min(sample_measured, len(cands)))
            lats = [measure_latency(c.config, env=env, warmup=warmup, repeats=repeats) for c in sample]
            measured = [lat.median_ms for lat in lats]
            k = sum(m <= limit for m in measured)
            within = k / len(measured)
            low, high = share_interval(k, len(measured))
            verdict = share_verdict(k, len(measured), WITHIN_GOAL)
            out[f"decode_margin_{label}"] = {
                "margin": margin,
                "budget_ms": limit,
                "draws": decodes,
                "decoded": len(cands),
                "seconds": decode_s,
                "within_predicted": inside,
                "measured_sample": len(measured),
                "within_measured": within,
                "within_measured_interval": [low, high],
                "within_measured_verdict": verdict,
                "within_measured_fastest": sum(lat.min_ms <= limit for lat in lats) / len(lats),
                "measured_over_budget_median": statistics.median(m / limit for m in measured),
            }
            log(
                f"  decode margin {label} ({margin:.1%}): {len(cands)}/{decodes} in {decode_s:.2f} s, "
                f"{inside:.0%} within the predicted {limit:.2f} ms, {k} of {len(measured)} measured "
                f"({low:.0%}-{high:.0%}; the {WITHIN_GOAL:.0%} goal: {verdict})"
            )

        # Channel multiples of 8 at equal MACs.
        variants = {
            "rexnet-1.0": get_preset("rexnet-1.0"),
            "rexnet-1.0 rounded to 8": linear_schedule(1.0, ch_div=8),
            "rexnet-linear at 400M, multiples of 8": baseline_candidate(
                "rexnet-linear", Budget(400_000_000, channel_multiple=8)
            ).config,
        }
        out["channel_multiple"] = {}
        for name, cfg in variants.items():
            lat = measure_latency(cfg, env=env, warmup=warmup, repeats=3 * repeats)
            cost = count_cost(cfg)
            out["channel_multiple"][name] = {
                "macs": cost.macs,
                "params": cost.params,
                "measured_ms": lat.median_ms,
                "spread_ms": lat.spread_ms,
                "fastest_ms": lat.min_ms,
                "predicted_ms": table.predict(cfg),
            }
            log(f"  {name}: {cost.macs:,} MACs, {lat.median_ms:.2f} ms (IQR {lat.spread_ms:.2f})")
        results["runtimes"][tag] = out
        if args.json:  # after every runtime, so a long run that is stopped keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    results["load_after"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - began
    text = json.dumps(results, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
