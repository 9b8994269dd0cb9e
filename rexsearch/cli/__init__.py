"""The ``rexsearch`` command: argument parsing and messages only.

Each subcommand lives in its own module with a ``register(subparsers)`` function that
adds its parser and sets ``handler``; the library below never prints.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from rexsearch import __version__
from rexsearch.errors import UserError

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("models", "search", "inspect", "train", "rank")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rexsearch",
        description="Channel-configuration search for ReXNet-style CNNs under a compute budget.",
    )
    parser.add_argument("--version", action="version", version=f"rexsearch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"rexsearch.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
