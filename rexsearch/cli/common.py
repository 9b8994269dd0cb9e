"""Helpers shared by subcommands: config sources, JSON output, tables."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rexsearch.config import ReXNetConfig
from rexsearch.principles import get_preset


def add_config_source(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--preset", metavar="NAME", help="a preset name (see `rexsearch presets`)")
    group.add_argument("--config", metavar="FILE", help="a config JSON file (rexsearch.config/1)")


def load_config_source(args: argparse.Namespace) -> ReXNetConfig:
    if getattr(args, "preset", None):
        return get_preset(args.preset)
    return ReXNetConfig.load(args.config)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if n and c[:1].isdigit() else c.ljust(w) for c, w in zip(row, widths, strict=False)
            ).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
