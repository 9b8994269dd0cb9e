"""`rexsearch latency`, `rexsearch latency-table build|show|check|preview`.

The budget flags (`--flops-budget`, `--latency-budget`, ...) are
:func:`~rexsearch.cli.common.add_budget_flags`, shared with `run` and `space`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from rexsearch.cli import command_help
from rexsearch.cli.common import (
    add_budget_flags,
    add_config_source,
    check_out_file,
    load_config_source,
    positive_int,
    print_json,
    print_table,
)
from rexsearch.cost import check_memory
from rexsearch.errors import UserError
from rexsearch.latency import (
    AUTO_MARGIN_SHARE,
    CORRECTIONS,
    DEVICES,
    DRIFT_NETWORKS,
    MIN_WEIGHTS_CALIBRATION,
    RUNTIMES,
    LatencyTable,
    LatencyTableError,
    auto_margin,
    build_table,
    check_drift,
    environment,
    load_table,
    measure_latency,
)
from rexsearch.principles import get_preset
from rexsearch.space import calibration_networks, calibration_shapes, shipped_space_names


def _env_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default cpu)")
    p.add_argument(
        "--runtime", choices=RUNTIMES, default="torch", help="torch or onnxruntime (default torch)"
    )
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's, usually all cores)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--resolution", type=positive_int, default=224, help="input size (default 224)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latency",
        help=command_help("latency"),
        description="Time the built network end to end: eval mode, BatchNorm folded into the convs, "
        "warm-up, then repeated runs; prints the median and the spread (interquartile range) with the "
        "settings (device name, runtime and version, threads, batch). CUDA is timed with "
        "synchronisation. With --latency-table, also the table's prediction.",
    )
    add_config_source(p)
    _env_flags(p)
    p.add_argument("--warmup", type=positive_int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--repeats", type=positive_int, default=30, help="timed runs (default 30)")
    p.add_argument("--latency-table", metavar="FILE", help="also predict with this table (same environment)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_latency)

    table = sub.add_parser(
        "latency-table",
        help=command_help("latency-table"),
        description="A latency table holds operator latencies measured on this machine (convs, depthwise "
        "convs, activations, SE, shortcuts, classifier on channel grids) and a correction fitted on "
        "end-to-end measurements; it predicts a config's latency in microseconds.",
    )
    tsub = table.add_subparsers(dest="table_command", metavar="ACTION", required=True)
    p = tsub.add_parser("build", help="measure a table on this machine (a few minutes on a CPU)")
    _env_flags(p)
    p.add_argument("--out", required=True, metavar="FILE", help="the table file (JSON)")
    p.add_argument("--points", type=positive_int, default=6, help="grid points per channel axis (default 6)")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed samples per operator (default 7)")
    p.add_argument(
        "--correction",
        choices=CORRECTIONS,
        default="line",
        help="what corrects the operators' sum: one line through the calibration networks (default), "
        "or a non-negative weight per operator kind (kinds)",
    )
    p.add_argument(
        "--channel-multiple",
        type=positive_int,
        metavar="M",
        help="for searches with --channel-multiple M: every channel grid point on a multiple of M and "
        "the calibration networks decoded with it (such a table serves only those searches)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a coarse grid and 8 calibration networks, in about a minute (a look, not a search: "
        "too few networks for --latency-margin auto)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(handler=cmd_table_build)

    p = tsub.add_parser("show", help="what a table was measured on, its correction and its size")
    p.add_argument("table", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_table_show)

    p = tsub.add_parser(
        "check",
        help="time some of a table's calibration networks again: has this machine drifted since?",
        description="Times calibration networks of the table again here, as the build did (the fastest "
        "of as many runs), and prints now / then: a machine that runs faster or slower than when the "
        "table was built (frequency scaling, a busy host, another VM type) shifts every prediction by "
        "that ratio.",
    )
    p.add_argument("table", metavar="FILE")
    p.add_argument(
        "--networks", type=positive_int, default=DRIFT_NETWORKS, help=f"how many (default {DRIFT_NETWORKS})"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(handler=cmd_table_check)

    shipped = ", ".join(shipped_space_names())
    p = tsub.add_parser(
        "preview",
        help="candidate configs a space yields under a latency (and MACs) budget",
        description="Sample a search space under a predicted latency budget, alone or with MACs/params "
        "budgets, optionally with widths rounded to a multiple (--channel-multiple 8).",
    )
    p.add_argument("space", metavar="SPACE", help=f"space name ({shipped}) or YAML file")
    add_budget_flags(p)
    p.add_argument("--sample", type=positive_int, default=5, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="JSON lines, one candidate each")
    p.set_defaults(handler=cmd_table_preview)


def cmd_latency(args: argparse.Namespace) -> int:
    config = load_config_source(args)
    check_memory(config, args.resolution, args.batch, purpose="time it")
    env = environment(args.device, args.runtime, args.threads, args.batch)
    table = load_table(args.latency_table, expect=env) if args.latency_table else None
    result = measure_latency(config, args.resolution, warmup=args.warmup, repeats=args.repeats, env=env)
    out = {"config": config.name or config.short_hash(), **result.to_dict()}
    if table is not None:
        if table.resolution != args.resolution:
            raise UserError(
                f"the latency table was built at {table.resolution}x{table.resolution}; "
                f"measure at --resolution {table.resolution} or build a table at {args.resolution}"
            )
        out["predicted_ms"] = table.predict(config, args.resolution)
    if args.json:
        print_json(out)
        return 0
    print(f"{out['config']} at {args.resolution}x{args.resolution}, batch {env.batch}, BatchNorm folded")
    print(f"  on            {env.describe()}")
    print(
        f"  latency       {result.median_ms:.3f} ms median, {result.spread_ms:.3f} ms IQR "
        f"(min {result.min_ms:.3f}, p90 {result.p90_ms:.3f}; {args.repeats} runs after {args.warmup} warm-up)"
    )
    if table is not None:
        err = out["predicted_ms"] / result.median_ms - 1
        print(f"  predicted     {out['predicted_ms']:.3f} ms by the table ({err:+.1%})")
    return 0


def _progress(quiet: bool) -> Callable[[str, int, int], None]:
    start = time.perf_counter()

    def report(stage: str, done: int, total: int) -> None:
        if quiet or (not sys.stderr.isatty() and done != total):
            return
        end = "\n" if done == total else ""
        sys.stderr.write(f"\r{stage}: {done}/{total} measured, {time.perf_counter() - start:.0f} s{end}")
        sys.stderr.flush()

    return report


def _say_multiple(table: LatencyTable) -> None:
    m = table.channel_multiple
    if m:
        print(f"  widths      multiples of {m} (serves searches with --channel-multiple {m})")
    if table.blocked_alignment:
        a = table.blocked_alignment
        print(f"  layout      convolutions measured apart on and off input channels on multiples of {a}")
        if table.plain_input_below:
            below = table.plain_input_below
            print(f"              dense ones under {below} inputs run blocked too; conversions counted")


def cmd_table_build(args: argparse.Namespace) -> int:
    check_out_file(args.out)  # before minutes of measuring, not after
    # the table times the shipped spaces' operators and calibration networks at this size and batch
    check_memory(get_preset("rexnet-3.0"), args.resolution, args.batch, purpose="time it for a latency table")
    points, repeats, shapes, calibration = args.points, args.repeats, None, None
    if args.quick:  # a coarse grid and few calibration networks: too few for --latency-margin auto
        points, repeats, shapes = min(points, 4), min(repeats, 3), calibration_shapes(per_space=2)
        calibration = calibration_networks(
            MIN_WEIGHTS_CALIBRATION, args.resolution, channel_multiple=args.channel_multiple
        )
    table = build_table(
        args.device,
        args.runtime,
        args.threads,
        args.resolution,
        args.batch,
        shapes=shapes,
        calibration=calibration,
        points=points,
        repeats=repeats,
        progress=_progress(args.quiet),
        correction=args.correction,
        channel_multiple=args.channel_multiple,
    )
    table.save(args.out)
    ops = sum(len(f.ms) for f in table.families.values())
    families = len(table.families)
    print(
        f"wrote {args.out}: {ops} operator measurements in {families} families, {table.build_seconds:.0f} s"
    )
    print(f"  on          {table.environment.describe()}")
    _say_multiple(table)
    c = table.correction
    print(f"  correction  {c.describe()} ({len(c.calibration)} networks)")
    return 0


def cmd_table_show(args: argparse.Namespace) -> int:
    table = load_table(args.table)
    c = table.correction
    info = {
        "environment": table.environment.to_dict(),
        "resolution": table.resolution,
        "channel_multiple": table.channel_multiple,
        "blocked_alignment": table.blocked_alignment,
        "plain_input_below": table.plain_input_below,
        "versions": table.versions,
        "families": len(table.families),
        "operators": sum(len(f.ms) for f in table.families.values()),
        "build_seconds": table.build_seconds,
        "correction": c.to_dict(),
        "auto_margin": _auto_margin(table),
    }
    if args.json:
        print_json(info)
        return 0
    print(
        f"{args.table}: {info['operators']} operators in {info['families']} families at {table.resolution}px"
    )
    print(f"  on          {table.environment.describe()}")
    _say_multiple(table)
    print(f"  correction  {c.describe()}")
    if info["auto_margin"] is not None:
        print(
            f"  margin      {info['auto_margin']:.1%} with --latency-margin auto (under it "
            f"{AUTO_MARGIN_SHARE:.0%} of the calibration networks, each predicted by the correction "
            "fitted without it, measured within the budget)"
        )
    print_table(
        ["calibration network", "summed ms", "fastest ms", "median ms", "predicted ms"],
        [
            [
                r["name"],
                f"{r['summed_ms']:.3f}",
                f"{r['measured_ms']:.3f}",
                f"{r['median_ms']:.3f}" if "median_ms" in r else "-",
                f"{c.apply(r.get('components', r['summed_ms'])):.3f}",
            ]
            for r in c.calibration
        ],
    )
    return 0


def _auto_margin(table: LatencyTable) -> float | None:
    """The table's ``--latency-margin auto`` (None when it has too few calibration networks)."""
    try:
        return auto_margin(table)
    except LatencyTableError:
        return None


def cmd_table_check(args: argparse.Namespace) -> int:
    drift = check_drift(load_table(args.table), args.networks, progress=_progress(args.quiet or args.json))
    if args.json:
        print_json({"ratio": drift.ratio, "networks": list(drift.networks)})
        return 0
    print_table(
        ["calibration network", "at the build ms", "now ms", "now / then"],
        [
            [r["name"], f"{r['then_ms']:.3f}", f"{r['now_ms']:.3f}", f"{r['ratio']:.3f}"]
            for r in drift.networks
        ],
    )
    print(drift.describe())
    return 0


def cmd_table_preview(args: argparse.Namespace) -> int:
    from rexsearch.cli.search import cmd_space

    return cmd_space(args)
