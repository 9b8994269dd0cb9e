"""`rexsearch compare`: design spaces compared by the distributions of their runs' models."""

from __future__ import annotations

import argparse

from rexsearch.cli import command_help


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help=command_help("compare"),
        description="Compare runs made with --sampler random on different spaces (or one space with "
        "different fixed choices) at the same budget: EDFs of accuracy and rank per run, the top/middle/"
        "bottom-10%% mean channel profiles, KS tests, and which space dominates. Writes compare.html "
        "(self-contained), compare.csv and compare_trials.csv into --out.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--force",
        action="store_true",
        help="compare runs at different budgets/resolutions/fidelities (the page says so) and "
        "replace existing outputs",
    )
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from rexsearch.compare import compare_runs, write_comparison

    comparison = compare_runs(args.run_dirs, force=args.force)
    files = write_comparison(comparison, args.out, force=args.force)
    for s in comparison.forced:
        print(f"note: compared despite a mismatch ({s})")
    print(f"verdict: {comparison.verdict}")
    print(f"comparison: {files['html']}")
    print(f"tables: {files['csv']}, {files['trials_csv']}")
    return 0
