"""Decoding draws of every shipped space into a MACs budget, with widths on a channel multiple.

For each space, budget and multiple: the share of seeded draws that decode into the 3% window
without and with the fill pass (``rexsearch.space.solve.fill_window``), the decode time, and how far
the fill moved the widths it raised (how many widths, the largest relative raise).

    python benchmarks/bench_decode.py [--draws 300] [--budgets 100M,400M,1G] [--multiples 1,8,16]

With ``--latency-table FILE``, under latency budgets instead: multiples of rexnet-1.0's
predicted latency (on the table's channel multiple, where it has one), each timed on a freshly
loaded table (its caches cold, as in a new search): seconds for the draws, how many decoded,
predictions per draw, how many draws went to the fill pass, and where the candidates sit in
the budget.

    python benchmarks/bench_decode.py --latency-table FILE [--draws 1000] [--spaces rexnet]
        [--latency-budgets 0.5,1,2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import rexsearch.space.solve as solve
from rexsearch.cli.common import positive_int
from rexsearch.cost import parse_budget
from rexsearch.latency import load_table
from rexsearch.principles import get_preset, linear_schedule
from rexsearch.space import SPACES_DIR, Budget, InfeasibleError, RandomTrial, load_space, shipped_space_names


def _decode_all(space, budget: Budget, draws: list[dict]) -> tuple[list, float]:
    start = time.perf_counter()
    out = []
    for values in draws:
        try:
            out.append(space.decode(values, budget))
        except InfeasibleError:
            out.append(None)
    return out, time.perf_counter() - start


class _Counted:
    """A latency table that counts its predictions (and the fill passes of a decode)."""

    def __init__(self, table) -> None:
        self.table, self.predictions, self.fills = table, 0, 0

    def __getattr__(self, name: str):
        return getattr(self.table, name)

    def predict(self, config, resolution=None) -> float:
        self.predictions += 1
        return self.table.predict(config, resolution)

    def count_fills(self, fill):
        def counted(*args, **kwargs):
            self.fills += 1
            return fill(*args, **kwargs)

        return counted


def _latency_rows(args: argparse.Namespace) -> list[dict]:
    """Decoding under latency budgets, each (space, budget, repeat) on a freshly loaded table."""
    probe = load_table(args.latency_table)
    multiple = probe.channel_multiple
    reference = linear_schedule(1.0, ch_div=multiple) if multiple else get_preset("rexnet-1.0")
    reference_ms = probe.predict(reference)
    names = args.spaces.split(",") if args.spaces else shipped_space_names()
    rows = []
    for name in names:
        space = load_space(name)
        rng = random.Random(7)
        draws = [space.suggest(RandomTrial(rng)) for _ in range(args.draws)]
        for factor in (float(f) for f in args.latency_budgets.split(",")):
            for repeat in range(args.repeat):
                table = _Counted(load_table(args.latency_table))  # cold caches, as a new search
                fill = solve.fill_window
                solve.fill_window = table.count_fills(fill)
                budget = Budget(
                    latency_ms=factor * reference_ms,
                    latency_table=table,  # type: ignore[arg-type]
                    channel_multiple=multiple,
                )
                try:
                    out, seconds = _decode_all(space, budget, draws)
                finally:
                    solve.fill_window = fill
                shares = sorted(c.latency_ms / budget.latency_ms for c in out if c is not None)
                rows.append(
                    {
                        "space": space.name,
                        "budget_ms": budget.latency_ms,
                        "budget_factor": factor,
                        "repeat": repeat,
                        "draws": len(draws),
                        "decoded": len(shares),
                        "seconds": seconds,
                        "predictions_per_draw": table.predictions / len(draws),
                        "filled": table.fills,
                        "within_predicted": all(s <= 1.0 for s in shares),
                        "median_of_budget": statistics.median(shares) if shares else None,
                    }
                )
    return rows


def _print_latency(rows: list[dict]) -> None:
    print("space                  budget ms  decoded     seconds  predictions/draw  filled  median of budget")
    for r in rows:
        median = "" if r["median_of_budget"] is None else f"{r['median_of_budget']:.4f}"
        print(
            f"{r['space']:<22} {r['budget_ms']:>9.2f}  {r['decoded']:>5}/{r['draws']:<5}"
            f"  {r['seconds']:>6.2f}"
            f"  {r['predictions_per_draw']:>16.1f}  {r['filled']:>6}  {median:>16}"
            + ("" if r["within_predicted"] else "  OVER THE BUDGET")
        )


def _widths(config) -> list[int]:
    return [*config.out_channels, config.penultimate_channels]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--draws", type=positive_int, help="seeded draws per space (default 300; 1000 with --latency-table)"
    )
    ap.add_argument("--budgets", default="100M,400M,1G", help="MACs budgets (default 100M,400M,1G)")
    ap.add_argument("--multiples", default="1,8,16", help="channel multiples (default 1,8,16)")
    ap.add_argument("--json", action="store_true", help="print every number as JSON")
    ap.add_argument("--latency-table", metavar="FILE", help="decode under latency budgets on this table")
    ap.add_argument(
        "--latency-budgets",
        default="1",
        help="with --latency-table: budgets as multiples of rexnet-1.0's predicted latency (default 1)",
    )
    ap.add_argument("--spaces", help="with --latency-table: comma-separated space names (default: all)")
    ap.add_argument(
        "--repeat", type=positive_int, default=1, help="with --latency-table: timings of each (default 1)"
    )
    args = ap.parse_args()
    if args.latency_table:
        args.draws = args.draws or 1000
        rows = _latency_rows(args)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            _print_latency(rows)
        return 0
    args.draws = args.draws or 300
    rows = []
    sweeps = solve.FILL_SWEEPS
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        space = load_space(path.stem)
        rng = random.Random(7)
        draws = [space.suggest(RandomTrial(rng)) for _ in range(args.draws)]
        for text in args.budgets.split(","):
            for multiple in (int(m) for m in args.multiples.split(",")):
                macs = parse_budget(text, "--budgets")
                budget = Budget(macs, channel_multiple=multiple if multiple > 1 else None)
                solve.FILL_SWEEPS = 0
                plain, plain_s = _decode_all(space, budget, draws)
                solve.FILL_SWEEPS = sweeps
                filled, filled_s = _decode_all(space, budget, draws)
                moved = []
                for values, before, after in zip(draws, plain, filled, strict=True):
                    if before is None and after is not None:
                        unfilled = space.build(values, after.width, budget.channel_multiple)
                        pairs = list(zip(_widths(unfilled), _widths(after.config), strict=True))
                        moved.append((sum(a != b for a, b in pairs), max((b - a) / a for a, b in pairs)))
                rows.append(
                    {
                        "space": space.name,
                        "budget": text,
                        "multiple": multiple,
                        "draws": len(draws),
                        "decoded_without_fill": sum(c is not None for c in plain),
                        "decoded": sum(c is not None for c in filled),
                        "ms_per_draw_without_fill": 1e3 * plain_s / len(draws),
                        "ms_per_draw": 1e3 * filled_s / len(draws),
                        "filled": len(moved),
                        "raised_widths_median": statistics.median(m for m, _ in moved) if moved else 0,
                        "largest_raise": max((r for _, r in moved), default=0.0),
                    }
                )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        "space                  budget  multiple  decoded (no fill)  decoded  ms/draw  filled  raised"
        "  max raise"
    )
    for r in rows:
        print(
            f"{r['space']:<22} {r['budget']:>6}  {r['multiple']:>8}  "
            f"{r['decoded_without_fill']:>7}/{r['draws']:<9}"
            f"  {r['decoded']:>3}/{r['draws']:<3}  {r['ms_per_draw']:>7.2f}  {r['filled']:>6}  "
            f"{r['raised_widths_median']:>6}  {r['largest_raise']:>8.0%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
