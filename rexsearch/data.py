"""CIFAR-100 ("python version" archive): find or download, verify, extract, load to tensors.

Where the data is looked for, in order: ``data_dir`` (``--data-dir``), then the cache
(``$REXSEARCH_DATA`` or ``~/.cache/rexsearch``), then a download into the cache from
:data:`CIFAR100_URL` (``$REXSEARCH_CIFAR100_URL`` overrides it). In each directory an
extracted ``cifar-100-python/`` folder is used as it is; an archive
``cifar-100-python.tar.gz`` is checked against :data:`CIFAR100_MD5`
(``$REXSEARCH_CIFAR100_MD5`` overrides it) and extracted safely next to itself.
Downloads go to a temporary file that is renamed into place only once its md5 matches,
so a later run never trusts a partial or corrupt file.

The pickles are decoded once and the tensors kept next to the folder
(``cifar-100-python.decoded.safetensors``), so later loads take well under a second.
The pickles are read with an unpickler that only admits the numpy array types the
format needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

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

_CHUNK = 1 << 20
_TIMEOUT_S = 30.0

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
    except (OSError, urllib.error.URLError) as exc:
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
    """Download ``url`` to ``directory/cifar-100-python.tar.gz`` via a verified temporary file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ARCHIVE_NAME
    fd, tmp_name = tempfile.mkstemp(prefix=f".{ARCHIVE_NAME}.", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            if progress:
                progress(done, total)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total and done != total:
            raise OSError(f"the connection closed after {done} of {total} bytes")
        if digest.hexdigest() != md5:
            raise DataError(
                f"the download from {url} has md5 {digest.hexdigest()}, expected {md5}; the bad file "
                f"was removed. Try again, or set {ENV_MD5} if the URL is a re-packed mirror."
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


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
    safe_extract(archive, archive.parent)
    return folder


def _escapes(path: PurePosixPath) -> bool:
    """Whether ``path`` (relative to the extraction folder) leads outside it."""
    if path.is_absolute():
        return True
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = PurePosixPath(member.name)
    if _escapes(name) or ".." in name.parts or member.name.startswith("\\"):
        raise DataError(
            f"{archive} has a member outside the extraction folder ({member.name!r}); refusing it"
        )
    if member.issym() or member.islnk():
        # a symlink's target is relative to its own folder, a hard link's to the archive root
        target = (name.parent if member.issym() else PurePosixPath()) / member.linkname
        if PurePosixPath(member.linkname).is_absolute() or _escapes(target):
            raise DataError(
                f"{archive} has a link pointing outside the extraction folder "
                f"({member.name!r} -> {member.linkname!r}); refusing it"
            )
    elif not (member.isfile() or member.isdir()):
        raise DataError(f"{archive} has a member that is not a file or folder ({member.name!r}); refusing it")


def safe_extract(archive: Path, directory: Path) -> Path:
    """Extract ``archive``'s ``cifar-100-python/`` into ``directory`` via a temporary folder.

    Every member is checked first: absolute paths, ``..`` and links leading outside are
    refused, so a crafted archive cannot write outside ``directory``.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.", suffix=".part", dir=directory))
            try:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: also normalises permissions
                    tar.extractall(tmp, members=members, filter="data")
                else:
                    tar.extractall(tmp, members=members)
                extracted = tmp / FOLDER_NAME
                missing = [m for m in MEMBERS if not (extracted / m).is_file()]
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
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from None
    return directory / FOLDER_NAME


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


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path} is not a CIFAR-100 pickle: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a CIFAR-100 pickle: expected a dict, got {type(data).__name__}")
    return data


def _decode_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = _read_pickle(path)
    for key in (b"data", b"fine_labels"):
        if key not in data:
            raise DataError(f"{path} lacks the key {key.decode()!r}; is it the CIFAR-100 python version?")
    images = np.asarray(data[b"data"])
    labels = np.asarray(data[b"fine_labels"], dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {images.dtype} {images.shape}")
    in_range = labels.min(initial=0) >= 0 and labels.max(initial=0) < NUM_CLASSES
    if labels.shape != (images.shape[0],) or not in_range:
        raise DataError(f"{path}: 'fine_labels' must be {images.shape[0]} labels in 0..{NUM_CLASSES - 1}")
    x = torch.from_numpy(np.ascontiguousarray(images).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels)


def _decode_classes(path: Path) -> tuple[str, ...]:
    meta = _read_pickle(path)
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


def _decode_folder(folder: Path) -> Cifar100:
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
    data = _decode_folder(folder)
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


# ---------------------------------------------------------------------------- writing
def write_cifar_archive(
    path: str | Path,
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    test_x: torch.Tensor | np.ndarray,
    test_y: torch.Tensor | np.ndarray,
    classes: tuple[str, ...] | list[str],
) -> str:
    """Write a ``cifar-100-python.tar.gz`` in the original format and return its md5.

    Images are uint8 (N, 3, 32, 32) or (N, 3072), labels 0..99; the coarse labels are
    ``fine // 5`` (the real mapping is not needed by anything here). Used by the tests.
    """
    if len(classes) != NUM_CLASSES:
        raise ValueError(f"classes must name {NUM_CLASSES} classes, got {len(classes)}")

    def batch(x: Any, y: Any, label: str) -> dict:
        images = np.asarray(x, dtype=np.uint8).reshape(len(y), 3 * 32 * 32)
        fine = [int(v) for v in np.asarray(y)]
        return {
            b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(fine))],
            b"batch_label": label.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": images,
        }

    meta = {
        b"fine_label_names": [c.encode() for c in classes],
        b"coarse_label_names": [f"superclass_{i}".encode() for i in range(NUM_CLASSES // 5)],
    }
    members = {
        "train": batch(train_x, train_y, "training batch 1 of 1"),
        "test": batch(test_x, test_y, "testing batch 1 of 1"),
        "meta": meta,
    }
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER_NAME)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for name, obj in members.items():
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{FOLDER_NAME}/{name}")
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return file_md5(path)
