"""CIFAR-100 ("python version" archive): find or download, verify, extract, load to tensors.

Where the data is looked for, in order: ``data_dir`` (``--data-dir``), then the cache
(``$REXSEARCH_DATA`` or ``~/.cache/rexsearch``), then a download into the cache from
:data:`CIFAR100_URL` (``$REXSEARCH_CIFAR100_URL`` overrides it). In each directory an
extracted ``cifar-100-python/`` folder is used as it is; an archive
``cifar-100-python.tar.gz`` is checked against :data:`CIFAR100_MD5`
(``$REXSEARCH_CIFAR100_MD5`` overrides it) and extracted safely next to itself.
Downloads go to a temporary file that is renamed into place only once its md5 matches,
so a later run never trusts a partial or corrupt file; downloads and extractions in one
directory take turns under a lock, and the next one removes an interrupted one's leftovers.

Extraction writes only the three regular members ``cifar-100-python/{train,test,meta}``,
each into a new file in a fresh temporary folder, never through a link; link, device and
FIFO members, oversized members and archives that inflate far beyond CIFAR-100's size
are refused (:data:`MAX_MEMBER_BYTES`, :data:`MAX_ARCHIVE_BYTES`, :data:`MAX_DOWNLOAD_BYTES`).

The pickles are decoded once and the tensors kept next to the folder
(``cifar-100-python.decoded.safetensors``), so later loads take well under a second.
The pickles are read with an unpickler that only admits the numpy array types the
format needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import bz2
import codecs
import fcntl
import gzip
import hashlib
import http.client
import io
import json
import logging
import lzma
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from rexsearch.errors import UserError

log = logging.getLogger(__name__)

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
FOLDER_NAME = "cifar-100-python"
MEMBERS = ("train", "test", "meta")
DECODED_NAME = "cifar-100-python.decoded.safetensors"
DECODED_FORMAT = "rexsearch.cifar100/1"
NUM_CLASSES = 100

ENV_DATA = "REXSEARCH_DATA"
ENV_URL = "REXSEARCH_CIFAR100_URL"
ENV_MD5 = "REXSEARCH_CIFAR100_MD5"

#: Limits that keep a hostile or wrong file from filling the disk or memory. The real
#: archive is 169 MB; its members are 155 MB (train), 31 MB (test) and 1.5 kB (meta).
MAX_DOWNLOAD_BYTES = 256 * 2**20
MAX_MEMBER_BYTES = 200 * 2**20
MAX_ARCHIVE_BYTES = 400 * 2**20
MAX_MEMBERS = 64
LOCK_NAME = f".{FOLDER_NAME}.lock"

_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

#: ``progress(bytes_done, bytes_total)``; ``bytes_total`` is 0 when the server does not say.
Progress = Callable[[int, int], None]


class DataError(UserError):
    """The data cannot be found, fetched, verified or read; the message says what to do."""


@dataclass(frozen=True)
class Cifar100:
    """CIFAR-100: uint8 images (N, 3, 32, 32), int64 fine labels, the 100 class names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """Training and validation part of CIFAR-100's training set (uint8 images, int64 labels)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


# ---------------------------------------------------------------------------- locations
def cache_dir() -> Path:
    """The cache directory: ``$REXSEARCH_DATA`` or ``~/.cache/rexsearch``."""
    value = os.environ.get(ENV_DATA)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "rexsearch"


def cifar100_url() -> str:
    return os.environ.get(ENV_URL) or CIFAR100_URL


def cifar100_md5() -> str:
    return (os.environ.get(ENV_MD5) or CIFAR100_MD5).lower()


def dataset_identity() -> dict[str, Any]:
    """What run.json records about the training data: the archive's md5 and whether it is
    CIFAR-100's own (``REXSEARCH_CIFAR100_MD5`` admits any archive in its format: a mirror,
    or a stand-in data set whose numbers are not CIFAR-100's)."""
    md5 = cifar100_md5()
    return {"archive_md5": md5, "cifar100": md5 == CIFAR100_MD5}


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _has_folder(directory: Path) -> bool:
    return (directory / FOLDER_NAME).is_dir()


def locate_cifar100(
    data_dir: str | Path | None = None, download: bool = True, progress: Progress | None = None
) -> Path:
    """The extracted ``cifar-100-python/`` folder, found, extracted or downloaded (see module doc)."""
    cache = cache_dir()
    searched: list[Path] = []
    if data_dir is not None:
        given = Path(data_dir).expanduser()
        if given.is_file():
            return _extract_verified(given)
        if given.name == FOLDER_NAME and given.is_dir():
            return given
        searched.append(given)
    searched.append(cache)
    for directory in searched:
        if _has_folder(directory):
            return directory / FOLDER_NAME
        if (directory / ARCHIVE_NAME).is_file():
            return _extract_verified(directory / ARCHIVE_NAME)
    url = cifar100_url()
    where = " and ".join(str(d) for d in searched)
    if not download:
        raise DataError(
            f"CIFAR-100 ({ARCHIVE_NAME}) is not in {where} and downloading is off. {_ways_out(cache)}"
        )
    try:
        archive = download_archive(url, cache, cifar100_md5(), progress)
    except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DataError(
            f"CIFAR-100 ({ARCHIVE_NAME}) is not in {where} and the download from {url} failed "
            f"({reason}). {_ways_out(cache)}"
        ) from None
    return _extract_verified(archive)


def _ways_out(cache: Path) -> str:
    return (
        f"Pass --data-dir DIR with {ARCHIVE_NAME} (or its extracted {FOLDER_NAME}/ folder) in it, "
        f"put the archive into {cache}, or run a data-free search with --objectives rank."
    )


# ---------------------------------------------------------------------------- download
def download_archive(url: str, directory: Path, md5: str, progress: Progress | None = None) -> Path:
    """Download ``url`` to ``directory/cifar-100-python.tar.gz`` via a verified temporary file.

    The temporary file has one fixed name (``.cifar-100-python.tar.gz.part``) and is written
    under the directory's lock, so the leftover of an interrupted download is truncated and
    reused by the next one instead of lingering. More than :data:`MAX_DOWNLOAD_BYTES` (by
    Content-Length or while streaming) is refused.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with _directory_lock(directory):
        target = directory / ARCHIVE_NAME
        if target.is_file():  # another process downloaded it while this one waited
            return target
        tmp = directory / f".{ARCHIVE_NAME}.part"
        try:
            digest = _download_to(url, tmp, progress)
            if digest != md5:
                raise DataError(
                    f"the download from {url} has md5 {digest}, expected {md5}; the bad file "
                    f"was removed. Try again, or set {ENV_MD5} if the URL is a re-packed mirror."
                )
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _download_to(url: str, tmp: Path, progress: Progress | None) -> str:
    """Stream ``url`` into ``tmp`` (created or truncated, never through a link); return its md5."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o644)
    digest = hashlib.md5()
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        total = _content_length(response.headers.get("Content-Length"))
        if total > MAX_DOWNLOAD_BYTES:
            raise _too_big_download(url, f"the server announces {total:,} bytes")
        done = 0
        if progress:
            progress(done, total)
        while chunk := response.read(_CHUNK):
            done += len(chunk)
            if done > MAX_DOWNLOAD_BYTES:
                raise _too_big_download(url, f"it sent more than {MAX_DOWNLOAD_BYTES:,} bytes")
            out.write(chunk)
            digest.update(chunk)
            if progress:
                progress(done, total)
    if total and done != total:
        raise OSError(f"the connection closed after {done} of {total} bytes")
    return digest.hexdigest()


def _content_length(value: str | None) -> int:
    """The announced size in bytes (0 when absent or not a plain number)."""
    return int(value) if value and value.strip().isdigit() and len(value) < 20 else 0


def _too_big_download(url: str, what: str) -> DataError:
    return DataError(
        f"the download from {url} is not the CIFAR-100 archive: {what}, and the archive is about "
        f"170 MB (at most {MAX_DOWNLOAD_BYTES:,} bytes are accepted); nothing was kept"
    )


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s exclusive lock (downloads and extractions there take turns).

    A lock file that a killed process left behind is simply taken over (the kernel drops
    the lock with the process). The file is removed on release; a waiter that locked a
    file removed meanwhile notices and locks the new one.
    """
    path = directory / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
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
        for stale in directory.glob(f".{ARCHIVE_NAME}*.part"):  # an interrupted download's
            stale.unlink(missing_ok=True)
        for stale in directory.glob(f".{FOLDER_NAME}.*.part"):  # an interrupted extraction's
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


# ---------------------------------------------------------------------------- extraction
def _extract_verified(archive: Path) -> Path:
    """Check ``archive``'s md5, then extract it next to itself (unless already extracted)."""
    folder = archive.parent / FOLDER_NAME
    if folder.is_dir():
        return folder
    expected = cifar100_md5()
    actual = file_md5(archive)
    if actual != expected:
        raise DataError(
            f"{archive} has md5 {actual}, expected {expected}: it is incomplete or not the CIFAR-100 "
            f"python archive. Delete it to download again, or set {ENV_MD5} if it is a re-packed mirror."
        )
    try:
        with _directory_lock(archive.parent):
            if not folder.is_dir():  # else another process extracted it while this one waited
                safe_extract(archive, archive.parent)
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {archive.parent}: {exc.strerror or exc}") from None
    return folder


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


def _open_compressed(archive: Path) -> BinaryIO:
    """``archive``'s decompressed bytes as a stream (gzip, bzip2, xz or a plain tar)."""
    with open(archive, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(archive, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(archive, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(archive, "rb")
    return open(archive, "rb")


class _CappedReader(io.RawIOBase):
    """Reads at most ``limit`` bytes from ``stream``; past that a DataError stops the reading."""

    def __init__(self, stream: BinaryIO, limit: int, archive: Path) -> None:
        self.stream, self.limit, self.archive, self.done = stream, limit, archive, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(min(len(buffer), _CHUNK))
        self.done += len(data)
        if self.done > self.limit:
            raise DataError(
                f"{self.archive} decompresses to more than {self.limit:,} bytes, far more than the "
                "CIFAR-100 archive's members; refusing it"
            )
        buffer[: len(data)] = data
        return len(data)


def safe_extract(archive: Path, directory: Path) -> Path:
    """Extract the CIFAR-100 members of ``archive`` into ``directory/cifar-100-python/``.

    Only regular members named ``cifar-100-python/{train,test,meta}`` are written; other
    regular files and folders are skipped (the real archive has a stray ``file.txt~``).
    A link, device or FIFO member, a name leading outside, a member larger than
    :data:`MAX_MEMBER_BYTES`, a repeated member or an archive decompressing to more than
    :data:`MAX_ARCHIVE_BYTES` is refused with a DataError naming it. The archive is read
    as a stream and the files are created (never through a link) in a fresh temporary
    folder that is renamed into place once complete, so whatever the archive holds and
    whatever the Python version, nothing is written outside ``directory``.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.", suffix=".part", dir=directory))
    try:
        extracted = tmp / FOLDER_NAME
        extracted.mkdir()
        with _open_compressed(archive) as raw:
            capped = io.BufferedReader(_CappedReader(raw, MAX_ARCHIVE_BYTES, archive), _CHUNK)
            with tarfile.open(fileobj=capped, mode="r|") as tar:
                written = _extract_members(tar, archive, extracted)
        missing = [m for m in MEMBERS if m not in written]
        if missing:
            raise DataError(
                f"{archive} is not the CIFAR-100 python archive: it lacks the member "
                f"{FOLDER_NAME}/{missing[0]}"
            )
        try:
            extracted.rename(directory / FOLDER_NAME)
        except OSError:
            if not _has_folder(directory):  # else a concurrent run extracted it first
                raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory / FOLDER_NAME


def _extract_members(tar: tarfile.TarFile, archive: Path, folder: Path) -> set[str]:
    """Write the wanted members of the streamed ``tar`` into ``folder``; their names."""
    wanted = {PurePosixPath(FOLDER_NAME, m): m for m in MEMBERS}
    written: set[str] = set()
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    try:
        for count, member in enumerate(tar, 1):
            if count > MAX_MEMBERS:
                raise DataError(f"{archive} has more than {MAX_MEMBERS} members; it is not CIFAR-100")
            name = _member_name(member, archive)
            if not (member.isreg() or member.isdir()):
                raise DataError(
                    f"{archive} has a member {member.name!r} that is {_member_kind(member)}; the "
                    "CIFAR-100 archive holds only regular files, so it is refused"
                )
            if member.size > MAX_MEMBER_BYTES:
                raise DataError(
                    f"{archive}'s member {member.name!r} would decompress to {member.size:,} bytes, "
                    f"more than the {MAX_MEMBER_BYTES:,} allowed (CIFAR-100's largest is about 160 MB); "
                    "refusing it"
                )
            short = wanted.get(name)
            if short is None or member.isdir():
                continue  # skipped: neither written nor followed
            if short in written:
                raise DataError(f"{archive} holds the member {member.name!r} twice; refusing it")
            source = tar.extractfile(member)
            assert source is not None  # a regular member always has data
            write_member(source, short, member.size, folder_fd)
            written.add(short)
    finally:
        os.close(folder_fd)
    return written


def write_member(source: BinaryIO, name: str, size: int, folder_fd: int) -> None:
    """Copy ``size`` bytes into a new file ``name`` created inside ``folder_fd`` (no link followed)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644, dir_fd=folder_fd)
    with os.fdopen(fd, "wb") as out:
        done = 0
        while chunk := source.read(min(_CHUNK, MAX_MEMBER_BYTES + 1 - done)):
            done += len(chunk)
            if done > size or done > MAX_MEMBER_BYTES:
                raise DataError(f"the member {name} holds more data than its header says; refusing it")
            out.write(chunk)


# ---------------------------------------------------------------------------- decoding
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's dicts of lists and numpy arrays and nothing else (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _RECONSTRUCT
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path} is not a CIFAR-100 pickle: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a CIFAR-100 pickle: expected a dict, got {type(data).__name__}")
    return data


def _decode_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read_pickle(path)
    for key in (b"data", b"fine_labels"):
        if key not in data:
            raise DataError(f"{path} lacks the key {key.decode()!r}; is it the CIFAR-100 python version?")
    images = _as_array(data[b"data"], path, "data")
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {images.dtype} {images.shape}")
    labels = _as_array(data[b"fine_labels"], path, "fine_labels")
    expected = f"{path}: 'fine_labels' must be {images.shape[0]} integer labels in 0..{NUM_CLASSES - 1}"
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        raise DataError(f"{expected}, got {labels.dtype} {labels.shape}")
    if labels.size and not (labels.min() >= 0 and labels.max() < NUM_CLASSES):
        raise DataError(f"{expected}, got values from {labels.min()} to {labels.max()}")
    x = torch.from_numpy(np.ascontiguousarray(images).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels.astype(np.int64))


def _as_array(value: Any, path: Path, key: str) -> np.ndarray:
    """``value`` as a numpy array; ragged or odd values are a DataError naming ``key``."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{path}: {key!r} is not an array of numbers ({exc})") from None


def _decode_classes(path: Path) -> tuple[str, ...]:
    meta = read_pickle(path)
    names = meta.get(b"fine_label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{path} lacks the {NUM_CLASSES} 'fine_label_names'")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _fingerprint(folder: Path) -> str:
    """Sizes and modification times of the three members: what the decoded cache was made from."""
    stats = {}
    for member in MEMBERS:
        st = (folder / member).stat()
        stats[member] = [st.st_size, st.st_mtime_ns]
    return json.dumps(stats, sort_keys=True)


def decode_folder(folder: Path) -> Cifar100:
    train_x, train_y = _decode_split(folder / "train")
    test_x, test_y = _decode_split(folder / "test")
    return Cifar100(train_x, train_y, test_x, test_y, _decode_classes(folder / "meta"))


def _load_decoded(path: Path, fingerprint: str) -> Cifar100 | None:
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != DECODED_FORMAT or meta.get("source") != fingerprint:
            return None
        tensors = load_file(str(path))
        classes = tuple(json.loads(meta["classes"]))
        return Cifar100(tensors["train_x"], tensors["train_y"], tensors["test_x"], tensors["test_y"], classes)
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        log.warning("ignoring the decoded CIFAR-100 cache %s: %s", path, exc)
        return None


def _save_decoded(path: Path, data: Cifar100, fingerprint: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        save_file(
            {"train_x": data.train_x, "train_y": data.train_y, "test_x": data.test_x, "test_y": data.test_y},
            str(tmp),
            metadata={"format": DECODED_FORMAT, "source": fingerprint, "classes": json.dumps(data.classes)},
        )
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot keep decoded CIFAR-100 tensors at %s: %s", path, exc)
    finally:
        tmp.unlink(missing_ok=True)


def load_cifar100(
    data_dir: str | Path | None = None, download: bool = True, progress: Progress | None = None
) -> Cifar100:
    """CIFAR-100 as tensors, from ``data_dir``, the cache or a download (see the module doc).

    ``progress(done, total)`` is called while downloading (bytes). Raises :class:`DataError`
    when the data cannot be had, with the ways out in the message.
    """
    folder = locate_cifar100(data_dir, download, progress)
    missing = [m for m in MEMBERS if not (folder / m).is_file()]
    if missing:
        raise DataError(f"{folder} lacks the member {FOLDER_NAME}/{missing[0]}")
    fingerprint = _fingerprint(folder)
    decoded = folder.parent / DECODED_NAME
    if decoded.is_file():
        cached = _load_decoded(decoded, fingerprint)
        if cached is not None:
            return cached
    data = decode_folder(folder)
    _save_decoded(decoded, data, fingerprint)
    return data


# ---------------------------------------------------------------------------- splits
def stratified_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation that deals the classes out round-robin.

    Every prefix of it is class-stratified: the first k indices hold about k / C images
    of each of the C classes (exactly, when k is a multiple of C and the classes are
    balanced), in random order within each class.
    """
    n = labels.numel()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    by_class = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[by_class]
    counts = torch.bincount(sorted_labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[sorted_labels]
    tiebreak = torch.rand(n, generator=gen, dtype=torch.float64)
    return by_class[torch.argsort(rank.double() + tiebreak)]


def stratified_subset(
    x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-stratified subset of ``n`` images (all of them, shuffled, if ``n`` is None)."""
    if n is not None and not 1 <= n <= y.numel():
        raise DataError(f"--train-images must be between 1 and {y.numel()}, got {n}")
    idx = stratified_order(y, seed)[:n]
    return x[idx], y[idx]


def search_split(
    data: Cifar100, val_images: int = 5000, train_images: int | None = None, seed: int = 0
) -> Split:
    """Split CIFAR-100's training set into the search's training and validation parts.

    Both parts are class-stratified and depend only on ``seed``; ``train_images`` (None:
    all that is not validation) takes a stratified subset. The test set is not touched:
    it is kept for ``rexsearch train``.
    """
    total = data.train_y.numel()
    if not 1 <= val_images < total:
        raise DataError(f"the validation split must hold between 1 and {total - 1} images, got {val_images}")
    available = total - val_images
    if train_images is not None and not 1 <= train_images <= available:
        raise DataError(
            f"--train-images must be between 1 and {available} (the {total} training images less "
            f"{val_images} for validation), got {train_images}"
        )
    order = stratified_order(data.train_y, seed)
    val_idx = order[:val_images]
    train_idx = order[val_images : val_images + (train_images or available)]
    x, y = data.train_x, data.train_y
    return Split(x[train_idx], y[train_idx], x[val_idx], y[val_idx])
