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
