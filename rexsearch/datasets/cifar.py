"""CIFAR-100 and CIFAR-10 ("python version" archives): find or download, verify, extract, decode.

Where an archive is looked for, in order: ``data_dir`` (``--data-dir``), then the cache
(``$REXSEARCH_DATA`` or ``~/.cache/rexsearch``), then a download into the cache from the
official URL (``$REXSEARCH_CIFAR100_URL`` / ``$REXSEARCH_CIFAR10_URL`` override it). In each
directory an extracted folder (``cifar-100-python/``, ``cifar-10-batches-py/``) is used as it
is; an archive is checked against the official md5 (``$REXSEARCH_CIFAR100_MD5`` /
``$REXSEARCH_CIFAR10_MD5`` override it: a re-packed mirror, a test archive) and extracted
safely next to itself (:func:`~rexsearch.datasets.download.safe_extract`). Downloads and
extractions in one directory take turns under that data set's lock.

The pickles are read with an unpickler that only admits the numpy array types the format
needs, so a tampered file cannot run code; they are decoded once and the tensors kept next to
the folder (``cifar-100-python.decoded.safetensors``), so later loads take well under a second.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rexsearch.augment import CIFAR100_MEAN, CIFAR100_STD
from rexsearch.datasets.base import DataError, DataSet, Progress, cache_dir, file_md5, replace_hint
from rexsearch.datasets.cache import load_decoded, save_decoded
from rexsearch.datasets.download import (
    NETWORK_ERRORS,
    Caps,
    TarLayout,
    directory_lock,
    fetch,
    network_reason,
    safe_extract,
)

#: Limits that keep a hostile or wrong file from filling the disk or memory. The real
#: archives are 169 MB (CIFAR-100) and 163 MB (CIFAR-10); their largest members are 155 MB
#: (CIFAR-100's train) and 31 MB (each CIFAR-10 batch).
MAX_DOWNLOAD_BYTES = 256 * 2**20
MAX_MEMBER_BYTES = 200 * 2**20
MAX_ARCHIVE_BYTES = 400 * 2**20
MAX_MEMBERS = 64


@dataclass(frozen=True)
class CifarSpec:
    """One CIFAR archive's names, checksums and pickle keys."""

    name: str
    title: str
    url: str
    md5: str
    archive: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    env: str  # the prefix of the environment overrides: REXSEARCH_CIFAR100 -> _URL, _MD5
    largest: str

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)

    @property
    def env_url(self) -> str:
        return f"{self.env}_URL"

    @property
    def env_md5(self) -> str:
        return f"{self.env}_MD5"

    def url_now(self) -> str:
        return os.environ.get(self.env_url) or self.url

    def md5_now(self) -> str:
        return (os.environ.get(self.env_md5) or self.md5).lower()

    @property
    def decoded(self) -> str:
        return f"{self.folder}.decoded.safetensors"

    @property
    def lock(self) -> str:
        return f".{self.folder}.lock"

    @property
    def layout(self) -> TarLayout:
        return TarLayout(self.title, self.folder, self.members, self.largest)


CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train=("train",),
    test=("test",),
    meta="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    classes=100,
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
    env="REXSEARCH_CIFAR100",
    largest="about 160 MB",
)
CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    meta="batches.meta",
    label_key="labels",
    names_key="label_names",
    classes=10,
    # the training set's channel statistics (of pixel values scaled to [0, 1])
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    env="REXSEARCH_CIFAR10",
    largest="about 31 MB",
)
SPECS = {s.name: s for s in (CIFAR100, CIFAR10)}


# ---------------------------------------------------------------------------- locations
def locate(
    spec: CifarSpec,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: Progress | None = None,
) -> Path:
    """The extracted folder of ``spec``, found, extracted or downloaded (see the module doc)."""
    cache = cache_dir()
    searched: list[Path] = []
    if data_dir is not None:
        given = Path(data_dir).expanduser()
        if given.is_file():
            return extract_verified(spec, given)
        if given.name == spec.folder and given.is_dir():
            return given
        searched.append(given)
    searched.append(cache)
    for directory in searched:
        if (directory / spec.folder).is_dir():
            return directory / spec.folder
        if (directory / spec.archive).is_file():
            return extract_verified(spec, directory / spec.archive)
    url = spec.url_now()
    where = " and ".join(str(d) for d in searched)
    if not download:
        raise DataError(
            f"{spec.title} ({spec.archive}) is not in {where} and downloading is off. "
            + _ways_out(spec, cache)
        )
    try:
        archive = download_archive(spec, url, cache, progress)
    except NETWORK_ERRORS as exc:
        raise DataError(
            f"{spec.title} ({spec.archive}) is not in {where} and the download from {url} failed "
            f"({network_reason(exc)}). {_ways_out(spec, cache)}"
        ) from None
    return extract_verified(spec, archive)


def _ways_out(spec: CifarSpec, cache: Path) -> str:
    return (
        f"Pass --data-dir DIR with {spec.archive} (or its extracted {spec.folder}/ folder) in it, "
        f"put the archive into {cache}, or run a data-free search with --objectives rank."
    )


def _lock(spec: CifarSpec, directory: Path) -> Any:
    return directory_lock(
        directory,
        spec.lock,
        stale_files=(f".{spec.archive}*.part",),  # an interrupted download's
        stale_dirs=(f".{spec.folder}.*.part",),  # an interrupted extraction's
    )


def download_archive(spec: CifarSpec, url: str, directory: Path, progress: Progress | None = None) -> Path:
    """Download ``url`` to ``directory/ARCHIVE`` via a verified temporary file, under the lock.

    The temporary file has one fixed name (``.ARCHIVE.part``), so the leftover of an
    interrupted download is truncated and reused by the next one instead of lingering. More
    than :data:`MAX_DOWNLOAD_BYTES` (by Content-Length or while streaming) is refused.
    """
    directory.mkdir(parents=True, exist_ok=True)
    expected = spec.md5_now()

    def check(tmp: Path, md5: str) -> str | None:
        if md5 == expected:
            return None
        return (
            f"has md5 {md5}, expected {expected}; the bad file was removed. Try again, or set "
            f"{spec.env_md5} if the URL is a re-packed mirror."
        )

    def too_big(what: str) -> DataError:
        return DataError(
            f"the download from {url} is not the {spec.title} archive: {what}, and the archive is about "
            f"170 MB (at most {MAX_DOWNLOAD_BYTES:,} bytes are accepted); nothing was kept"
        )

    with _lock(spec, directory):
        target = directory / spec.archive
        if target.is_file():  # another process downloaded it while this one waited
            return target
        return fetch(
            url, target, check, MAX_DOWNLOAD_BYTES, too_big, progress, f"{spec.title} ({spec.archive})"
        )


def extract_verified(spec: CifarSpec, archive: Path) -> Path:
    """Check ``archive``'s md5, then extract it next to itself (unless already extracted)."""
    folder = archive.parent / spec.folder
    if folder.is_dir():
        return folder
    expected = spec.md5_now()
    actual = file_md5(archive)
    if actual != expected:
        raise DataError(
            f"{archive} has md5 {actual}, expected {expected}: it is incomplete or not the {spec.title} "
            f"python archive. {replace_hint(archive)}, or set {spec.env_md5} if it is a re-packed mirror."
        )
    try:
        with _lock(spec, archive.parent):
            if not folder.is_dir():  # else another process extracted it while this one waited
                safe_extract(
                    archive,
                    archive.parent,
                    spec.layout,
                    Caps(MAX_MEMBER_BYTES, MAX_ARCHIVE_BYTES, MAX_MEMBERS),
                )
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {archive.parent}: {exc.strerror or exc}") from None
    return folder


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


def read_pickle(path: Path, title: str = "CIFAR") -> dict:
    """The dict pickled in ``path``, read with the restricted unpickler (keys stay bytes)."""
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path} is not a {title} pickle: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a {title} pickle: expected a dict, got {type(data).__name__}")
    return data


#: The most labels one CIFAR member holds (50,000 in CIFAR-100's train): a larger list is no
#: CIFAR member, refused before it is read.
MAX_LABELS = 60_000


def _flat(value: Any, path: Path, key: str, kinds: tuple[type, ...]) -> Any:
    """``value`` when it is an ndarray, or a flat list of at most :data:`MAX_LABELS` elements
    of ``kinds``; anything else (nested or shared lists, which a pickle can make expand into
    gigabytes when read, other types) is a DataError before it is read element by element."""
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, list):
        raise DataError(f"{path}: {key!r} is a {type(value).__name__}, not an array or a list")
    if len(value) > MAX_LABELS:
        raise DataError(
            f"{path}: {key!r} holds {len(value):,} entries, more than a CIFAR member ({MAX_LABELS:,})"
        )
    if not all(type(v) in kinds for v in value):
        raise DataError(
            f"{path}: {key!r} is not a flat list of {' or '.join(k.__name__ for k in kinds)} values"
        )
    return value


def _as_array(value: Any, path: Path, key: str) -> np.ndarray:
    """``value`` as a numpy array; ragged or odd values are a DataError naming ``key``."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{path}: {key!r} is not an array of numbers ({exc})") from None


def decode_batch(spec: CifarSpec, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch: uint8 images (N, 3, 32, 32) and int64 labels in 0..classes-1."""
    data = read_pickle(path, spec.title)
    for key in ("data", spec.label_key):
        if key.encode() not in data:
            raise DataError(f"{path} lacks the key {key!r}; is it the {spec.title} python version?")
    images = data[b"data"]
    if not isinstance(images, np.ndarray):  # the format's images are one uint8 array, never a list
        raise DataError(f"{path}: 'data' must be a uint8 array, got a {type(images).__name__}")
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {images.dtype} {images.shape}")
    labels = _as_array(
        _flat(data[spec.label_key.encode()], path, spec.label_key, (int,)), path, spec.label_key
    )
    expected = f"{path}: {spec.label_key!r} must be {images.shape[0]} integer labels in 0..{spec.classes - 1}"
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        raise DataError(f"{expected}, got {labels.dtype} {labels.shape}")
    if labels.size and not (labels.min() >= 0 and labels.max() < spec.classes):
        raise DataError(f"{expected}, got values from {labels.min()} to {labels.max()}")
    x = torch.from_numpy(np.ascontiguousarray(images).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels.astype(np.int64))


def decode_classes(spec: CifarSpec, path: Path) -> tuple[str, ...]:
    meta = read_pickle(path, spec.title)
    names = meta.get(spec.names_key.encode())
    if isinstance(names, list):
        names = _flat(names, path, spec.names_key, (bytes, str))
    if not isinstance(names, list) or len(names) != spec.classes:
        raise DataError(f"{path} lacks the {spec.classes} {spec.names_key!r}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _decode_parts(
    spec: CifarSpec, folder: Path, members: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [decode_batch(spec, folder / m) for m in members]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def decode_folder(spec: CifarSpec, folder: Path) -> dict[str, Any]:
    """The extracted folder's tensors and class names."""
    train_x, train_y = _decode_parts(spec, folder, spec.train)
    test_x, test_y = _decode_parts(spec, folder, spec.test)
    tensors = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    return {"tensors": tensors, "classes": decode_classes(spec, folder / spec.meta)}


def _forget_extracted(folder: Path) -> None:
    """Remove an extracted folder that failed to decode when it lies in the cache (never a
    folder of the user's): a refused member is not left behind to be found again."""
    try:
        inside = folder.resolve().is_relative_to(cache_dir().resolve())
    except OSError:
        return
    if inside and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)


def _fingerprint(spec: CifarSpec, folder: Path) -> str:
    """Sizes and modification times of the members: what the decoded cache was made from."""
    stats = {}
    for member in spec.members:
        st = (folder / member).stat()
        stats[member] = [st.st_size, st.st_mtime_ns]
    return json.dumps(stats, sort_keys=True)


def load_cifar(
    spec: CifarSpec,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: Progress | None = None,
) -> DataSet:
    """``spec``'s data set as tensors, from ``data_dir``, the cache or a download (module doc).

    ``progress`` is called while downloading. Raises :class:`DataError` when the data cannot be
    had, with the ways out in the message.
    """
    folder = locate(spec, data_dir, download, progress)
    missing = [m for m in spec.members if not (folder / m).is_file()]
    if missing:
        raise DataError(f"{folder} lacks the member {spec.folder}/{missing[0]}")
    fingerprint = _fingerprint(spec, folder)
    decoded = folder.parent / spec.decoded
    fmt = f"rexsearch.{spec.name}/2"
    cached = load_decoded(decoded, fmt, fingerprint)
    if cached is not None:
        tensors, info = cached
        classes = tuple(info["classes"])
    else:
        try:
            fresh = decode_folder(spec, folder)
        except DataError:
            _forget_extracted(folder)
            raise
        tensors, classes = fresh["tensors"], fresh["classes"]
        save_decoded(decoded, tensors, fmt, fingerprint, {"classes": list(classes)})
    md5 = spec.md5_now()
    official = md5 == spec.md5
    extra: dict[str, Any] = {"archive_md5": md5}
    if spec is CIFAR100:
        extra["cifar100"] = official  # the key runs recorded before --dataset
    return DataSet(
        name=spec.name,
        title=spec.title,
        train_x=tensors["train_x"],
        train_y=tensors["train_y"],
        test_x=tensors["test_x"],
        test_y=tensors["test_y"],
        classes=classes,
        mean=spec.mean,
        std=spec.std,
        digest=f"md5:{md5}",
        official=official,
        source=str(folder.resolve()),
        extra=extra,
    )
