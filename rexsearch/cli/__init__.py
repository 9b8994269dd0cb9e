"""The ``rexsearch`` command: argument parsing and messages only.

Each subcommand lives in a module of this package with a ``register(subparsers)`` function
that adds its parsers and sets ``handler``; the library below never prints. Only the module
of the command being run is imported (:data:`COMMANDS` names the others for ``--help``), so
``rexsearch --version`` and ``rexsearch --help`` import neither torch, Ray nor plotly.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import importlib
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import NoReturn

from rexsearch._version import __version__
from rexsearch.errors import UserError

#: Every command: the module that registers it and its one-line help, in ``--help`` order.
COMMANDS: dict[str, tuple[str, str]] = {
    "presets": ("models", "list presets with params/MACs; with NAME, print its config JSON"),
    "cost": ("models", "parameters and MACs of a config (analytic; --verify adds fvcore)"),
    "run": ("search", "the search: proxy trainings on Ray Tune, chosen by Optuna, inside a budget"),
    "resume": ("search", "continue an interrupted run"),
    "confirm": ("confirm", "retrain a run's top configs and baselines with seeds; the verdict beyond noise"),
    "compare": (
        "compare",
        "compare design spaces: EDFs, channel profiles and KS tests of random-sampler runs",
    ),
    "space": ("search", "candidate configs a space yields under a budget"),
    "dashboard": ("inspect", "optuna-dashboard on a run's storage"),
    "report": ("inspect", "(re)write a run's HTML report, trials.csv and pareto.png"),
    "export": ("inspect", "checkpoint of a run's winner, or of a preset in another layout"),
    "train": ("train", "train one config's CIFAR-100 proxy and evaluate it on the test set"),
    "bench": ("train", "benchmarks (bench train: proxy-training throughput)"),
    "rank": ("rank", "per-layer normalized feature rank of a config (data-free)"),
    "rank-study": ("rank", "the paper's random-network rank studies (CSV + HTML)"),
    "latency": ("latency", "end-to-end latency of a config on this machine (torch or ONNX Runtime)"),
    "latency-table": ("latency", "build, show or use a per-operator latency table"),
}


def command_help(name: str) -> str:
    """The one-line help of command ``name`` (what ``rexsearch --help`` lists)."""
    return COMMANDS[name][1]


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors said in one line (the usage block is in ``--help``);
    the commands' parsers are of this class too (``add_subparsers`` makes its own kind)."""

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):  # e.g. --flops-budget -5M: read as an option
            message += " (a value that starts with '-' is written --option=VALUE)"
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None, full: bool = False) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module is imported and registered
    (the others are listed by name and help), with ``full`` every module is."""
    parser = OneLineParser(
        prog="rexsearch",
        description="Channel-configuration search for ReXNet-style CNNs under a compute budget.",
    )
    parser.add_argument("--version", action="version", version=f"rexsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = (
        {m for m, _ in COMMANDS.values()}
        if full
        else {COMMANDS[command][0]}
        if command in COMMANDS
        else set()
    )
    registered: set[str] = set()
    for name, (module, help_text) in COMMANDS.items():
        if module in wanted:
            if module not in registered:
                importlib.import_module(f"rexsearch.cli.{module}").register(sub)
                registered.add(module)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (its first argument that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"rexsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rexsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            return _internal(exc)
        from rexsearch.files import os_error_message

        print(f"rexsearch: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if _DISK_FULL in str(exc).lower():  # SQLite's own word for ENOSPC
            print(
                "rexsearch: error: the study database's disk is full (SQLite: database or disk is full); "
                "free some space on it, then resume",
                file=sys.stderr,
            )
            return 2
        return _internal(exc)


def entry() -> None:
    """The ``rexsearch`` executable: :func:`main`, then an exit without the interpreter's teardown.

    Tearing down torch, Ray, scipy and plotly takes 1-2 s after every command on 2 cores, and
    nothing is left to do by then: every file is written atomically, the study's transactions
    are committed, Ray is shut down. So once ``main`` returned, the exit handlers run, the
    standard streams are flushed and the process ends with ``os._exit``. Where a thread other
    than a daemon one still runs, or the exit status is not a number, the ordinary exit is kept;
    output that cannot be flushed (other than to a closed pipe) is said and exits 120, as
    Python's own exit does.
    """
    try:
        code = main()
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        code = exc.code
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not isinstance(code, int) or others:
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # a closed pipe or stream: nothing more can reach it
        pass
    except OSError as exc:  # output that could not be written (a full disk): say so, exit non-zero
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"rexsearch: error: the output could not be written: {exc.strerror or exc}\n")
        code = code or 120
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


def _internal(exc: BaseException) -> int:
    """An internal error: one line, the traceback on request."""
    if os.environ.get("REXSEARCH_DEBUG"):
        traceback.print_exc()
    print(
        f"rexsearch: internal error: {type(exc).__name__}: {exc} (set REXSEARCH_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return 1


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
_DISK_FULL = "database or disk is full"
