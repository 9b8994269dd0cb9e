"""Writing files so that a reader never sees half of one: a temporary sibling, then a rename."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it onto ``path``.

    The rename is atomic on one file system, so ``path`` holds either the old or the new
    content, never a mix; if ``write`` raises, the temporary file is removed and ``path``
    is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def os_error_message(exc: OSError, path: str | Path | None = None, doing: str = "write") -> str:
    """One sentence for an OSError of the file system: a full disk names its mount point."""
    import errno

    where = Path(path or exc.filename or ".")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the disk holding {where} (the file system mounted at {mount_point(where)}); "
            "free some space or choose another directory"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot {doing}: {where} is not writable ({exc.strerror}); choose a directory you can write"
    if exc.errno == errno.ENOTDIR:
        return f"cannot {doing}: {where} (or a folder above it) is a file, not a directory"
    return f"cannot {doing} at {where}: {exc.strerror or exc}"


def read_text_file(path: str | Path, what: str, max_bytes: int, error: type[Exception] | None = None) -> str:
    """The UTF-8 text of ``path``; a file that cannot be read, is larger than ``max_bytes`` or is
    not UTF-8 raises ``error`` (a :class:`~rexsearch.errors.UserError` by default) in one line
    naming ``what`` and the path."""
    from rexsearch.errors import UserError

    error = error or UserError
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise error(f"{what} {path} is larger than {max_bytes:,} bytes; it cannot be a {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}); is it the right file?") from None


def loads_json(text: str, what: str, error: type[Exception] | None = None) -> object:
    """``json.loads(text)`` with every way text can fail to be JSON a one-line ``error``: a syntax
    error (with its line and column), nesting too deep, an integer longer than Python reads."""
    import json
    import sys

    from rexsearch.errors import UserError

    error = error or UserError
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    except ValueError:  # an integer longer than Python reads from text
        raise error(
            f"{what} holds an integer of more than {sys.get_int_max_str_digits():,} digits; "
            "no value needs that many"
        ) from None
