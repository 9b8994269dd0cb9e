"""Decoding draws of every shipped space into a MACs budget, with widths on a channel multiple.

For each space, budget and multiple: the share of seeded draws that decode into the 3% window
without and with the fill pass (``rexsearch.space.fill_window``), the decode time, and how far
the fill moved the widths it raised (how many widths, the largest relative raise).

    python benchmarks/bench_decode.py [--draws 300] [--budgets 100M,400M,1G] [--multiples 1,8,16]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import rexsearch.space as space_module
from rexsearch.cli.common import positive_int
from rexsearch.cost import parse_budget
from rexsearch.space import SPACES_DIR, Budget, InfeasibleError, _RandomTrial, load_space


def _decode_all(space, budget: Budget, draws: list[dict]) -> tuple[list, float]:
    start = time.perf_counter()
    out = []
    for values in draws:
        try:
            out.append(space.decode(values, budget))
        except InfeasibleError:
            out.append(None)
    return out, time.perf_counter() - start


def _widths(config) -> list[int]:
    return [*config.out_channels, config.penultimate_channels]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=positive_int, default=300, help="seeded draws per space (default 300)")
    ap.add_argument("--budgets", default="100M,400M,1G", help="MACs budgets (default 100M,400M,1G)")
    ap.add_argument("--multiples", default="1,8,16", help="channel multiples (default 1,8,16)")
    ap.add_argument("--json", action="store_true", help="print every number as JSON")
    args = ap.parse_args()
    rows = []
    sweeps = space_module.FILL_SWEEPS
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        space = load_space(path.stem)
        rng = random.Random(7)
        draws = [space.suggest(_RandomTrial(rng)) for _ in range(args.draws)]
        for text in args.budgets.split(","):
            for multiple in (int(m) for m in args.multiples.split(",")):
                macs = parse_budget(text, "--budgets")
                budget = Budget(macs, channel_multiple=multiple if multiple > 1 else None)
                space_module.FILL_SWEEPS = 0
                plain, plain_s = _decode_all(space, budget, draws)
                space_module.FILL_SWEEPS = sweeps
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
