"""`rexsearch presets` and `rexsearch cost`."""

from __future__ import annotations

import argparse
import time

from rexsearch.cli import command_help
from rexsearch.cli.common import add_config_source, load_config_source, positive_int, print_json, print_table
from rexsearch.cost import check_memory, count_cost, format_count, measure_cost
from rexsearch.principles import PRESETS, get_preset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "presets",
        help=command_help("presets"),
        description="List the presets with parameters and MACs (224x224, conv+linear "
        "multiply-accumulates). With NAME, print that preset's config JSON, which can be "
        "edited and passed back with --config.",
    )
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_presets)

    p = sub.add_parser(
        "cost",
        help=command_help("cost"),
        description="Parameters and MACs (conv+linear multiply-accumulates at the given "
        "resolution, batch 1, eval mode: the 'FLOPs' of mobile-CNN papers) computed from "
        "the config alone, plus fvcore's total (which adds BatchNorm and pooling).",
    )
    add_config_source(p)
    p.add_argument("--resolution", type=positive_int, default=224, help="input size (default 224)")
    p.add_argument("--verify", action="store_true", help="also measure with fvcore and time both")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_cost)


def cmd_presets(args: argparse.Namespace) -> int:
    if args.name:
        print(get_preset(args.name).to_json())
        return 0
    rows = []
    for name, preset in PRESETS.items():
        cost = count_cost(preset.config())
        rows.append(
            {
                "name": name,
                "params": cost.params,
                "macs": cost.macs,
                "fvcore_total": cost.fvcore_total,
                "description": preset.description,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ["preset", "params", "MACs@224", "fvcore total", "description"],
        [
            [r["name"], f"{r['params']:,}", f"{r['macs']:,}", f"{r['fvcore_total']:,}", r["description"]]
            for r in rows
        ],
    )
    print("\nMACs: conv+linear multiply-accumulates at 224x224, batch 1 (the papers' 'FLOPs').")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    config = load_config_source(args)
    start = time.perf_counter()
    cost = count_cost(config, args.resolution)
    analytic_s = time.perf_counter() - start
    out: dict = cost.to_dict()
    measured = None
    if args.verify:
        check_memory(config, args.resolution, purpose="measure it with fvcore (--verify)")
        measured = measure_cost(config, args.resolution)
        out["fvcore"] = measured.to_dict()
        out["seconds"] = {"analytic": analytic_s, "fvcore": measured.seconds}
    if args.json:
        print_json(out)
        return 0
    label = config.name or args.config
    print(f"{label} at {args.resolution}x{args.resolution}")
    print(f"  params        {cost.params:>15,}  ({format_count(cost.params)})")
    print(f"  MACs          {cost.macs:>15,}  ({format_count(cost.macs)}; conv+linear multiply-accumulates)")
    print(f"  fvcore total  {cost.fvcore_total:>15,}  (MACs + BatchNorm + pooling)")
    if measured is not None:
        agree = (measured.params, measured.macs, measured.total) == (
            cost.params,
            cost.macs,
            cost.fvcore_total,
        )
        print(f"  fvcore        params {measured.params:,}, MACs {measured.macs:,}, total {measured.total:,}")
        print(
            f"  agreement     {'exact' if agree else 'MISMATCH'}; analytic {analytic_s * 1e6:.0f} us, "
            f"fvcore {measured.seconds * 1e3:.0f} ms"
        )
        if not agree:
            return 1
    return 0
