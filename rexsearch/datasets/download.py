"""Fetching and unpacking data files safely: capped downloads, md5 checks, a lock per data
folder, and tar extraction that writes nothing outside its folder.

* :func:`fetch` streams a URL into a temporary file (created or truncated, never through a
  link), refuses more than a cap (by Content-Length or while streaming), checks the result
  and only then renames it into place, so a later run never trusts a partial or corrupt file.
* :func:`directory_lock` makes downloads and extractions in one folder take turns and removes
  an interrupted one's leftovers.
* :func:`safe_extract` writes only the wanted regular members of a tar archive, each into a new
  file of a fresh temporary folder that is renamed into place once complete; link, device and
  FIFO members, names leading outside, oversized members and archives inflating past a cap
  are refused with a :class:`~rexsearch.datasets.base.DataError` naming them.
"""

from __future__ import annotations

import bz2
import fcntl
import gzip
import hashlib
import http.client
import io
import lzma
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from rexsearch.datasets.base import DataError, Progress

CHUNK = 1 << 20
TIMEOUT_S = 30.0
#: A download slower than this on average, once :data:`RATE_GRACE_S` have passed, is given up:
#: a server dripping a byte every few seconds never trips the per-read timeout.
MIN_RATE_BYTES_S = 16 * 1024
RATE_GRACE_S = 60.0
#: No download runs longer than this, however fast it still is.
DEADLINE_S = 3600.0
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

#: Errors a download raises when the network or the server fails (said in one line).
NETWORK_ERRORS = (OSError, urllib.error.URLError, http.client.HTTPException)


def network_reason(exc: BaseException) -> str:
    """Why a download failed, in a few words."""
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


# ---------------------------------------------------------------------------- download
def fetch(
    url: str,
    target: Path,
    check: Callable[[Path, str], str | None],
    max_bytes: int,
    too_big: Callable[[str], DataError],
    progress: Progress | None = None,
    label: str = "",
) -> Path:
    """Download ``url`` to ``target`` through the temporary file ``.NAME.part`` beside it.

    ``check(tmp, md5)`` returns None when the downloaded file is the expected one, else the
    problem ("has md5 ..."; the file is removed and ``the download from URL PROBLEM`` raised).
    ``too_big(what)`` makes
    the error for a download past ``max_bytes``. The caller holds the folder's
    :func:`directory_lock`, so the temporary name is its own.
    """
    tmp = target.with_name(f".{target.name}.part")
    try:
        digest = _download_to(url, tmp, max_bytes, too_big, progress, label or target.name)
        problem = check(tmp, digest)
        if problem:
            raise DataError(f"the download from {url} {problem}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _download_to(
    url: str,
    tmp: Path,
    max_bytes: int,
    too_big: Callable[[str], DataError],
    progress: Progress | None,
    label: str,
) -> str:
    """Stream ``url`` into ``tmp`` (created or truncated, never through a link); return its md5."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644)
    digest = hashlib.md5()
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        total = content_length(response.headers.get("Content-Length"))
        if total > max_bytes:
            raise too_big(f"the server announces {total:,} bytes")
        done = 0
        start = time.monotonic()
        if progress:
            progress("download", label, done, total)
        while chunk := response.read1(CHUNK):
            done += len(chunk)
            _check_pace(done, time.monotonic() - start)
            if done > max_bytes:
                raise too_big(f"it sent more than {max_bytes:,} bytes")
            out.write(chunk)
            digest.update(chunk)
            if progress:
                progress("download", label, done, total)
    if total and done != total:
        raise OSError(f"the connection closed after {done} of {total} bytes")
    return digest.hexdigest()


def _check_pace(done: int, seconds: float) -> None:
    """Give a download up past :data:`DEADLINE_S`, or below :data:`MIN_RATE_BYTES_S` on average
    after :data:`RATE_GRACE_S` (an OSError: the callers say it in one line with the ways out)."""
    if seconds > DEADLINE_S:
        raise OSError(f"the download took longer than {DEADLINE_S:.0f} s ({done:,} bytes so far); gave up")
    if seconds > RATE_GRACE_S and done < MIN_RATE_BYTES_S * seconds:
        raise OSError(
            f"the download is too slow: {done:,} bytes in {seconds:.0f} s, below "
            f"{MIN_RATE_BYTES_S // 1024} KiB/s; gave up"
        )


def content_length(value: str | None) -> int:
    """The announced size in bytes (0 when absent or not a plain number)."""
    return int(value) if value and value.strip().isdigit() and len(value) < 20 else 0


# ---------------------------------------------------------------------------- the folder lock
@contextmanager
def directory_lock(
    directory: Path, name: str, stale_files: tuple[str, ...] = (), stale_dirs: tuple[str, ...] = ()
) -> Iterator[None]:
    """Hold ``directory``'s exclusive lock ``name`` (downloads and extractions there take turns).

    A lock file that a killed process left behind is simply taken over (the kernel drops the
    lock with the process). Once locked, files matching ``stale_files`` and folders matching
    ``stale_dirs`` (glob patterns: an interrupted download's or extraction's leftovers) are
    removed. The lock file is removed on release; a waiter that locked a file removed meanwhile
    notices and locks the new one.
    """
    path = directory / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if os.fstat(fd).st_ino == current.st_ino:
            break
        os.close(fd)
    try:
        for pattern in stale_files:
            for stale in directory.glob(pattern):
                if not stale.is_dir():
                    stale.unlink(missing_ok=True)
        for pattern in stale_dirs:
            for stale in directory.glob(pattern):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


# ---------------------------------------------------------------------------- decompression
def open_compressed(path: Path) -> BinaryIO:
    """``path``'s decompressed bytes as a stream (gzip, bzip2, xz, or the file as it is)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


#: What a damaged compressed stream raises while it is read.
DECOMPRESSION_ERRORS = (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


class CappedReader(io.RawIOBase):
    """Reads at most ``limit`` bytes from ``stream``; past that ``too_big()`` is raised."""

    def __init__(self, stream: BinaryIO, limit: int, too_big: Callable[[], DataError]) -> None:
        self.stream, self.limit, self.too_big, self.done = stream, limit, too_big, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(min(len(buffer), CHUNK))
        self.done += len(data)
        if self.done > self.limit:
            raise self.too_big()
        buffer[: len(data)] = data
        return len(data)


# ---------------------------------------------------------------------------- tar extraction
@dataclass(frozen=True)
class TarLayout:
    """The members an archive must hold: ``folder/member`` for each of ``members``."""

    title: str  # the data set, for messages ("CIFAR-100")
    folder: str
    members: tuple[str, ...]
    largest: str  # the largest real member's size in words, for the refusal


_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return f"{_KINDS[member.type]} (to {member.linkname!r})"
    return _KINDS.get(member.type, f"of tar type {member.type!r}")


def _member_name(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """The member's normalised relative name; names that lead outside the folder are refused."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or "\\" in member.name or "\x00" in member.name:
        raise DataError(
            f"{archive} has a member outside the extraction folder ({member.name!r}); refusing it"
        )
    return name


@dataclass(frozen=True)
class Caps:
    """Limits of one extraction: per member, the whole decompressed archive, the member count."""

    member_bytes: int
    archive_bytes: int
    members: int = 64


def safe_extract(archive: Path, directory: Path, layout: TarLayout, caps: Caps) -> Path:
    """Extract ``layout``'s members of ``archive`` into ``directory/layout.folder/``.

    Only regular members named ``folder/member`` are written; other regular files and folders
    are skipped (the real CIFAR-100 archive has a stray ``file.txt~``). A link, device or FIFO
    member, a name leading outside, a member larger than ``caps.member_bytes``, a repeated
    member or an archive decompressing to more than ``caps.archive_bytes`` is refused with a
    DataError naming it. The archive is read as a stream and the files are created (never
    through a link) in a fresh temporary folder that is renamed into place once complete, so
    whatever the archive holds and whatever the Python version, nothing is written outside
    ``directory``.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{layout.folder}.", suffix=".part", dir=directory))
    try:
        extracted = tmp / layout.folder
        extracted.mkdir()

        def too_big() -> DataError:
            return DataError(
                f"{archive} decompresses to more than {caps.archive_bytes:,} bytes, far more than the "
                f"{layout.title} archive's members; refusing it"
            )

        with open_compressed(archive) as raw:
            capped = io.BufferedReader(CappedReader(raw, caps.archive_bytes, too_big), CHUNK)
            with tarfile.open(fileobj=capped, mode="r|") as tar:
                written = _extract_members(tar, archive, extracted, layout, caps)
        missing = [m for m in layout.members if m not in written]
        if missing:
            raise DataError(
                f"{archive} is not the {layout.title} python archive: it lacks the member "
                f"{layout.folder}/{missing[0]}"
            )
        try:
            extracted.rename(directory / layout.folder)
        except OSError:
            if not (directory / layout.folder).is_dir():  # else a concurrent run extracted it first
                raise
    except (tarfile.TarError, *DECOMPRESSION_ERRORS) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory / layout.folder


def _extract_members(
    tar: tarfile.TarFile, archive: Path, folder: Path, layout: TarLayout, caps: Caps
) -> set[str]:
    """Write the wanted members of the streamed ``tar`` into ``folder``; their names."""
    wanted = {PurePosixPath(layout.folder, m): m for m in layout.members}
    written: set[str] = set()
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    try:
        for count, member in enumerate(tar, 1):
            if count > caps.members:
                raise DataError(f"{archive} has more than {caps.members} members; it is not {layout.title}")
            name = _member_name(member, archive)
            if not (member.isreg() or member.isdir()):
                raise DataError(
                    f"{archive} has a member {member.name!r} that is {_member_kind(member)}; the "
                    f"{layout.title} archive holds only regular files, so it is refused"
                )
            if member.size > caps.member_bytes:
                raise DataError(
                    f"{archive}'s member {member.name!r} would decompress to {member.size:,} bytes, "
                    f"more than the {caps.member_bytes:,} allowed ({layout.title}'s largest is "
                    f"{layout.largest}); refusing it"
                )
            short = wanted.get(name)
            if short is None or member.isdir():
                continue  # skipped: neither written nor followed
            if short in written:
                raise DataError(f"{archive} holds the member {member.name!r} twice; refusing it")
            source = tar.extractfile(member)
            assert source is not None  # a regular member always has data
            write_member(source, short, member.size, folder_fd, caps.member_bytes)
            written.add(short)
    finally:
        os.close(folder_fd)
    return written


def write_member(source: BinaryIO, name: str, size: int, folder_fd: int, limit: int) -> None:
    """Copy ``size`` bytes into a new file ``name`` created inside ``folder_fd`` (no link followed)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644, dir_fd=folder_fd)
    with os.fdopen(fd, "wb") as out:
        done = 0
        while chunk := source.read(min(CHUNK, limit + 1 - done)):
            done += len(chunk)
            if done > size or done > limit:
                raise DataError(f"the member {name} holds more data than its header says; refusing it")
            out.write(chunk)
