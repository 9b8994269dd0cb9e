"""Helpers shared by subcommands: config sources, budget flags, JSON output, tables."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rexsearch.config import ReXNetConfig
from rexsearch.cost import parse_budget
from rexsearch.datasets import DATASETS, DEFAULT_DATASET, dataset_help
from rexsearch.errors import UserError
from rexsearch.files import os_error_message
from rexsearch.principles import get_preset
from rexsearch.space import Budget, check_feasible


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


def bounded_int(low: int, high: int, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (a usage error, exit 2, naming the range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            shown = text if len(text) <= 30 else text[:27] + "..."
            raise argparse.ArgumentTypeError(f"expected {what} in {low:,}..{high:,}, got {shown!r}")
        return value

    return parse


#: What a seed can be (torch and numpy take 32-bit seeds everywhere rexsearch passes one).
SEED = bounded_int(0, 2**32 - 1, "an integer seed")


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work is done, an output file that could not be written: a directory,
    a missing folder, or one this process cannot create files in (tried with a probe file)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file path")
    folder = path.parent
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise UserError(f"{flag} {path}: the folder {folder} {what}; create it or choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {path}: {os_error_message(exc, folder, 'create files there')}") from None
    return path


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


#: A cell printed right-aligned: a number, with at most a two-letter unit (149.90M, 1.80%, 12 ms).
_NUMBER = re.compile(r"[+-]?[\d,]*\.?\d+ ?[A-Za-z%]{0,2}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if n and _NUMBER.fullmatch(c) else c.ljust(w)
                for c, w in zip(row, widths, strict=False)
            ).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def add_budget_flags(p: argparse.ArgumentParser, flops_required: bool = False) -> None:
    """The budget flags; a latency budget may stand alone or join the MACs/params budgets."""
    p.add_argument("--flops-budget", required=flops_required, metavar="B", help="MACs budget, e.g. 400M")
    p.add_argument("--params-budget", metavar="P", help="parameter budget, e.g. 5M")
    p.add_argument("--latency-budget", metavar="T", help="predicted latency budget: 12ms, 0.012s or 12 (ms)")
    p.add_argument(
        "--latency-table", metavar="FILE", help="the table that predicts latency (latency-table build)"
    )
    p.add_argument(
        "--latency-margin",
        default="0",
        metavar="F",
        help="keep the prediction under the budget less this fraction, e.g. 0.05 (default 0); 'auto': "
        "the margin that kept 95%% of the table's calibration networks within it; 'measure': the margin "
        "that kept 95%% of 20 of the space's candidates under the budget, timed here first (20-40 s)",
    )
    p.add_argument(
        "--channel-multiple",
        type=positive_int,
        metavar="M",
        help="round every width to a multiple of M, e.g. 8",
    )
    p.add_argument("--resolution", type=positive_int, default=224, help="budget resolution (default 224)")


def budget_from_args(args: argparse.Namespace) -> Budget:
    """A Budget from :func:`add_budget_flags`' flags (exit 2 on a bad value or a missing pair)."""
    if args.latency_table and not args.latency_budget:
        raise UserError("--latency-table is used with --latency-budget; give both")
    if args.latency_budget and not args.latency_table:
        raise UserError(
            "--latency-budget needs --latency-table FILE (build one with `rexsearch latency-table build`)"
        )
    if not args.flops_budget and not args.latency_budget:
        raise UserError("give a budget: --flops-budget B and/or --latency-budget T with --latency-table FILE")
    macs = parse_budget(args.flops_budget, "--flops-budget") if args.flops_budget else None
    params = parse_budget(args.params_budget, "--params-budget") if args.params_budget else None
    latency, table = None, None
    if args.latency_budget:
        from rexsearch.latency import load_table, parse_latency_budget

        latency = parse_latency_budget(args.latency_budget)
        table = load_table(args.latency_table)
    if table is not None and table.resolution != args.resolution:
        raise UserError(
            f"the latency table {args.latency_table} was built at {table.resolution}x{table.resolution} and "
            f"the budget at {args.resolution}x{args.resolution}: build one at --resolution {args.resolution}"
        )
    if table is not None:
        table.check_channel_multiple(args.channel_multiple, f"the latency table {args.latency_table}")
    margin = latency_margin_from_arg(args.latency_margin, table)
    return Budget(macs, params, args.resolution, latency, table, margin, args.channel_multiple)


#: ``--latency-margin`` words: the table's calibration networks, or the space's candidates timed here.
AUTO, MEASURE = "auto", "measure"


def latency_margin_from_arg(text: str | float, table: Any = None) -> float:
    """``--latency-margin``: a fraction in [0, 1), or ``auto`` (:func:`rexsearch.latency.auto_margin`
    of the table; 0 without a latency budget, where no margin applies). ``measure`` needs the
    space and is resolved by :func:`feasible_budget`: 0 here."""
    word = str(text).strip().lower()
    if word == MEASURE:
        return 0.0
    if word == AUTO:
        if table is None:
            return 0.0
        from rexsearch.latency import auto_margin

        return auto_margin(table)
    try:
        margin = float(text)
    except ValueError:
        raise UserError(
            f"--latency-margin must be a fraction in [0, 1), auto or measure, got {text!r}"
        ) from None
    if not 0.0 <= margin < 1.0:  # also refuses nan
        raise UserError(f"--latency-margin must be in [0, 1), got {text}")
    return margin


def feasible_budget(
    args: argparse.Namespace, budget: Budget, space: Any, seed: int, say: Callable[[str], None]
) -> tuple[Budget, Any]:
    """``budget`` checked feasible in ``space`` (else the one-line refusal); with ``--latency-margin
    measure`` and a latency budget, then the margin of :func:`rexsearch.latency.measured_margin`
    (the space's candidates timed here, what it found passed to ``say``) and the check again.
    Returns the budget and the :class:`~rexsearch.latency.MeasuredMargin` (``None`` without one)."""
    check_feasible(space, budget, seed=seed)  # at no margin first: a refusal before any timing
    if str(args.latency_margin).strip().lower() != MEASURE or budget.latency_ms is None:
        return budget, None
    from rexsearch.latency import MEASURED_MARGIN_CANDIDATES, measured_margin

    say(f"timing {MEASURED_MARGIN_CANDIDATES} candidates of {space.name} for --latency-margin measure ...")
    found = measured_margin(space, budget, seed=seed)
    say(found.describe())
    budget = replace(budget, latency_margin=found.margin)
    check_feasible(space, budget, seed=seed)
    return budget, found


def none_completed(table: Any, what: str) -> str | None:
    """The one-line reason when rows of ``table`` were run and none of them completed, else None.

    ``table`` has ``number``, ``state`` and ``error`` columns (trials.csv, a confirmation's table);
    the reason names the first failure's cause as the run recorded it.
    """
    if table.empty or (table["state"] == "COMPLETE").any():
        return None
    first = table.sort_values("number").iloc[0]
    for _, row in table.sort_values("number").iterrows():
        if row["error"]:
            first = row
            break
    cause = " ".join(str(first["error"]).split()) or str(first["state"]).lower()
    cause = cause[:297] + "..." if len(cause) > 300 else cause
    return f"no {what} completed ({len(table)} ran); the first failure, trial {first['number']}: {cause}"


class Termination:
    """SIGTERM handled like Ctrl-C: Ray Tune's SIGINT handler stops the session cleanly.

    Install it after ``ray.init`` (which installs its own handler); ``received`` tells a
    command to exit 143 instead of 130.
    """

    def __init__(self) -> None:
        self.received = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)

    def __call__(self, signum: int, frame: object) -> None:
        self.received = True
        os.kill(os.getpid(), signal.SIGINT)

    @property
    def exit_code(self) -> int:
        """130 for Ctrl-C, 143 (128 + SIGTERM) for SIGTERM."""
        return 128 + signal.SIGTERM if self.received else 130


def add_dataset_flags(p: argparse.ArgumentParser) -> None:
    """``--dataset`` and ``--data-dir`` (run, train)."""
    p.add_argument(
        "--dataset",
        metavar="NAME",
        help=f"the data set proxies train on: {', '.join(DATASETS)} (default {DEFAULT_DATASET}). "
        + dataset_help()
        + ". See docs/datasets.md",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the data set's files are (cifar-100-python.tar.gz, cifar-10-python.tar.gz or their "
        "extracted folders; Fashion-MNIST's four IDX files); default: the cache, Debian's copy of "
        "Fashion-MNIST, then a download. With --dataset folder: the image folder (required)",
    )


def data_progress(quiet: bool):
    """A progress callback for downloads (bytes) and decoding (images), on stderr."""
    state = {"last": ""}

    def report(kind: str, label: str, done: int, total: int) -> None:
        if quiet or not total:
            return
        pct = int(100 * done / total)
        if kind == "download":
            line = f"downloading {label}: {pct:3d}% of {total / 1e6:.0f} MB"
        else:
            line = f"{label}: {done:,} of {total:,} ({pct}%)"
        if line != state["last"]:
            state["last"] = line
            sys.stderr.write(f"\r{line}\033[K" if sys.stderr.isatty() else "")
            if done >= total:
                sys.stderr.write(f"\r{line}\033[K\n" if sys.stderr.isatty() else line + "\n")
            sys.stderr.flush()

    return report
