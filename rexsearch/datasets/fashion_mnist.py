"""Fashion-MNIST: the four IDX files, found, downloaded or taken from Debian's package; decoded.

28x28 grayscale images of 10 kinds of clothing, 60,000 for training and 10,000 for testing,
in four IDX files (big-endian headers: magic 2051 and three dimensions for images, 2049 and
one for labels), gzip-compressed or not. Where they are looked for, in order: ``data_dir``
(``--data-dir``, the files themselves or a ``fashion-mnist/`` folder inside it), the cache
(``$REXSEARCH_DATA/fashion-mnist/``), Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist/``), then a download into the cache from the official
base URL (``$REXSEARCH_FASHION_MNIST_URL`` overrides it).

Each file is verified: its md5 must be the upstream .gz file's (as the Fashion-MNIST
repository publishes them) or its decompressed content's (Debian recompressed the files, so
their .gz md5s differ while the content is the same). ``$REXSEARCH_FASHION_MNIST_MD5`` replaces
the accepted checksums by four of its own (comma-separated, in the order of :data:`FILES`, each
compared with the file and with its content): a re-packed mirror or a test copy, recorded as
not official. A header claiming more than :data:`MAX_IDX_BYTES` of pixels is refused before
anything is allocated; a wrong magic, odd dimensions, a truncated or overlong file are refused
with the file's name.

The images are zero-padded by 2 pixels on each side to 32x32 (Fashion-MNIST's background is
black, so the padding extends it) and kept with one channel; the trainer repeats it into the
three channels of the network's stem. The decoded tensors are kept in the cache
(``fashion-mnist.decoded.safetensors``), never next to the files, so a read-only copy works.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from rexsearch.datasets.base import DataError, DataSet, Progress, cache_dir, file_md5, one_line, replace_hint
from rexsearch.datasets.cache import load_decoded, save_decoded
from rexsearch.datasets.download import (
    DECOMPRESSION_ERRORS,
    NETWORK_ERRORS,
    directory_lock,
    fetch,
    network_reason,
    open_compressed,
)

NAME = "fashion-mnist"
TITLE = "Fashion-MNIST"
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
ENV_URL = "REXSEARCH_FASHION_MNIST_URL"
ENV_MD5 = "REXSEARCH_FASHION_MNIST_MD5"
#: The IDX files (without .gz), in the order of ``$REXSEARCH_FASHION_MNIST_MD5``.
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: md5 of the upstream .gz files (github.com/zalandoresearch/fashion-mnist).
GZ_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
#: md5 of the decompressed files (the same for the upstream files and Debian's recompressed ones).
CONTENT_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
#: Folders with a system-wide copy: Debian's ``dataset-fashion-mnist`` package.
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
FOLDER = "fashion-mnist"
DECODED_NAME = "fashion-mnist.decoded.safetensors"
DECODED_FORMAT = "rexsearch.fashion-mnist/1"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SIDE = 28
PAD = 2
#: Channel statistics of the padded 32x32 training images (of pixel values scaled to [0, 1]);
#: unpadded they are 0.2860 and 0.3530.
MEAN = (0.2190, 0.2190, 0.2190)
STD = (0.3318, 0.3318, 0.3318)

#: Limits: the largest real file is 26.4 MB compressed and 47.0 MB decompressed.
MAX_DOWNLOAD_BYTES = 64 * 2**20
MAX_IDX_BYTES = 64 * 2**20

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


# ---------------------------------------------------------------------------- checksums
def accepted_md5s() -> dict[str, set[str]]:
    """Per file, the md5s accepted for the file or its content (the override's, else official)."""
    value = os.environ.get(ENV_MD5)
    if not value:
        return {f: {GZ_MD5[f], CONTENT_MD5[f]} for f in FILES}
    given = [v.strip().lower() for v in value.split(",")]
    if len(given) != len(FILES) or not all(
        len(v) == 32 and all(c in "0123456789abcdef" for c in v) for v in given
    ):
        raise DataError(
            f"{ENV_MD5} must be four md5s separated by commas, for {', '.join(FILES)} in that order; "
            f"got {value!r}"
        )
    return {f: {md5} for f, md5 in zip(FILES, given, strict=True)}


def _is_official(name: str, file_md5_: str, content_md5: str) -> bool:
    return file_md5_ == GZ_MD5[name] or content_md5 == CONTENT_MD5[name]


# ---------------------------------------------------------------------------- IDX reading
def read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """The uint8 array of an IDX file (gzip-compressed or not) and its content's md5.

    ``magic`` is 2051 (images) or 2049 (labels); ``shape`` gives the dimensions after the count
    (``(28, 28)`` for images, ``()`` for labels). The header is checked before any pixel is
    read: a wrong magic, other dimensions or a count of more than :data:`MAX_IDX_BYTES` bytes
    is refused; so is a file shorter or longer than its header says.
    """
    ndim = 1 + len(shape)
    try:
        with open_compressed(path) as stream:
            header = read_exact(stream, 4 + 4 * ndim)
            if len(header) < 4:
                raise DataError(f"{path} is not an IDX file: it ends before its 4-byte magic number")
            (found,) = struct.unpack(">i", header[:4])
            if found != magic:
                kind = "image" if magic == IMAGES_MAGIC else "label"
                raise DataError(
                    f"{path} is not an IDX {kind} file: its magic number is {found}, expected {magic}"
                )
            if len(header) < 4 + 4 * ndim:
                raise DataError(f"{path} is truncated: it ends inside its header")
            dims = struct.unpack(f">{ndim}i", header[4:])
            if tuple(dims[1:]) != shape or dims[0] < 0:
                raise DataError(
                    f"{path} has dimensions {' x '.join(map(str, dims))}, expected N"
                    + "".join(f" x {d}" for d in shape)
                )
            size = dims[0] * int(np.prod(shape, dtype=np.int64))
            if size > MAX_IDX_BYTES:
                raise DataError(
                    f"{path}'s header claims {dims[0]:,} items ({size:,} bytes), more than the "
                    f"{MAX_IDX_BYTES:,} bytes allowed (Fashion-MNIST's largest file holds 47,040,000); "
                    "refusing it"
                )
            body = read_exact(stream, size)
            if len(body) < size:
                raise DataError(
                    f"{path} is truncated: its header claims {dims[0]:,} items, it holds {len(body):,} bytes "
                    f"of the {size:,}"
                )
            if stream.read(1):
                raise DataError(
                    f"{path} holds more data than its header says ({dims[0]:,} items); refusing it"
                )
    except DECOMPRESSION_ERRORS as exc:
        raise DataError(f"{path} is damaged or truncated: {one_line(exc)}") from None
    content = hashlib.md5(header)
    content.update(body)
    return np.frombuffer(body, dtype=np.uint8).reshape(dims), content.hexdigest()


def content_md5(path: Path) -> str | None:
    """The md5 of ``path``'s decompressed content, read under the size cap (None if unreadable)."""
    try:
        digest = hashlib.md5()
        with open_compressed(path) as stream:
            done = 0
            while chunk := stream.read(1 << 20):
                done += len(chunk)
                if done > MAX_IDX_BYTES + 64:
                    return None
                digest.update(chunk)
        return digest.hexdigest()
    except DECOMPRESSION_ERRORS:
        return None


# ---------------------------------------------------------------------------- locations
def _file_in(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _files_in(directory: Path) -> dict[str, Path | None]:
    return {name: _file_in(directory, name) for name in FILES}


def _complete(directory: Path) -> dict[str, Path] | None:
    found = _files_in(directory)
    return None if any(p is None for p in found.values()) else found  # type: ignore[return-value]


def base_url() -> str:
    return (os.environ.get(ENV_URL) or URL).rstrip("/") + "/"


def locate(
    data_dir: str | Path | None = None, download: bool = True, progress: Progress | None = None
) -> dict[str, Path]:
    """The four files (see the module doc for where they are looked for)."""
    cache = cache_dir() / FOLDER
    if data_dir is not None:
        given = Path(data_dir).expanduser()
        for directory in (given, given / FOLDER):
            found = _complete(directory)
            if found:
                return found
        partial = {n: p for n, p in _files_in(given).items() if p is not None}
        if partial:
            missing = next(n for n in FILES if n not in partial)
            raise DataError(
                f"{given} holds part of Fashion-MNIST but not {missing}.gz; put all four IDX files "
                f"({', '.join(f + '.gz' for f in FILES)}) there"
            )
    for directory in (cache, *SYSTEM_DIRS):
        found = _complete(directory)
        if found:
            return found
    searched = [*([str(Path(data_dir).expanduser())] if data_dir is not None else []), str(cache)]
    searched += [str(d) for d in SYSTEM_DIRS]
    where = ", ".join(searched)
    ways = (
        f"Pass --data-dir DIR with the four IDX files ({', '.join(f + '.gz' for f in FILES)}), put them "
        f"into {cache}, install Debian's dataset-fashion-mnist package, or run a data-free search with "
        "--objectives rank."
    )
    if not download:
        raise DataError(f"Fashion-MNIST is not in {where} and downloading is off. {ways}")
    url = base_url()
    try:
        return download_files(url, cache, progress)
    except NETWORK_ERRORS as exc:
        raise DataError(
            f"Fashion-MNIST is not in {where} and the download from {url} failed ({network_reason(exc)}). "
            f"{ways}"
        ) from None


def download_files(url: str, directory: Path, progress: Progress | None = None) -> dict[str, Path]:
    """Download the files ``directory`` lacks from the base ``url``, each verified, under the lock."""
    directory.mkdir(parents=True, exist_ok=True)
    accepted = accepted_md5s()
    with directory_lock(directory, f".{FOLDER}.lock", stale_files=(".*-ubyte.gz.part",)):
        for name in FILES:
            if _file_in(directory, name) is not None:  # kept from an earlier, interrupted download
                continue
            file_url = f"{url}{name}.gz"

            def check(tmp: Path, md5: str, name: str = name) -> str | None:
                if md5 in accepted[name] or content_md5(tmp) in accepted[name]:
                    return None
                return (
                    f"has md5 {md5}, and neither it nor its content's md5 is the expected "
                    f"{' or '.join(sorted(accepted[name]))}; the bad file was removed. Try again, or set "
                    f"{ENV_MD5} if the URL is a re-packed mirror."
                )

            def too_big(what: str, file_url: str = file_url) -> DataError:
                return DataError(
                    f"the download from {file_url} is not a Fashion-MNIST file: {what}, and the largest is "
                    f"about 26 MB (at most {MAX_DOWNLOAD_BYTES:,} bytes are accepted); nothing was kept"
                )

            target = directory / f"{name}.gz"
            fetch(
                file_url, target, check, MAX_DOWNLOAD_BYTES, too_big, progress, f"Fashion-MNIST ({name}.gz)"
            )
    found = _complete(directory)
    assert found is not None
    return found


# ---------------------------------------------------------------------------- decoding
def _fingerprint(files: dict[str, Path]) -> str:
    """Where the files are, their sizes and modification times, and the accepted checksums."""
    stats = {}
    for name, path in files.items():
        st = path.stat()
        stats[name] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    return json.dumps({"files": stats, "accepted": os.environ.get(ENV_MD5) or "official"}, sort_keys=True)


def _verify(path: Path, name: str, data_md5: str, accepted: set[str]) -> str:
    """The file's own md5 once it or its content matches an accepted md5; else a DataError."""
    own = file_md5(path)
    if own in accepted or data_md5 in accepted:
        return own
    raise DataError(
        f"{path} has md5 {own} (content {data_md5}), expected {' or '.join(sorted(accepted))}: it is "
        f"incomplete or not Fashion-MNIST's {name}. {replace_hint(path)}, or set {ENV_MD5} if it "
        "is a re-packed copy."
    )


def decode(files: dict[str, Path], progress: Progress | None = None) -> dict[str, Any]:
    """Verify and decode the four files: padded tensors, per-file md5s, the digest."""
    accepted = accepted_md5s()
    arrays: dict[str, np.ndarray] = {}
    contents: dict[str, str] = {}
    official = True
    for i, name in enumerate(FILES):
        if progress:
            progress("decode", f"Fashion-MNIST ({files[name].name})", i, len(FILES))
        images = "images" in name
        array, md5 = read_idx(
            files[name], IMAGES_MAGIC if images else LABELS_MAGIC, (SIDE, SIDE) if images else ()
        )
        own = _verify(files[name], name, md5, accepted[name])
        official = official and _is_official(name, own, md5)
        arrays[name], contents[name] = array, md5
    if progress:
        progress("decode", "Fashion-MNIST", len(FILES), len(FILES))
    tensors = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if len(x) != len(y):
            raise DataError(
                f"{files[f'{prefix}-labels-idx1-ubyte']} holds {len(y):,} labels for {len(x):,} images"
            )
        if y.size and y.max() >= len(CLASSES):
            raise DataError(
                f"{files[f'{prefix}-labels-idx1-ubyte']} has a label {int(y.max())}; Fashion-MNIST's are 0..9"
            )
        padded = np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD)))[:, None]
        tensors[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(padded))
        tensors[f"{split}_y"] = torch.from_numpy(y.astype(np.int64))
    digest = hashlib.md5("\n".join(contents[n] for n in FILES).encode()).hexdigest()
    return {
        "tensors": tensors,
        "info": {"digest": f"md5:{digest}", "official": official, "content_md5": contents},
    }


def load_fashion_mnist(
    data_dir: str | Path | None = None, download: bool = True, progress: Progress | None = None
) -> DataSet:
    """Fashion-MNIST as tensors: (N, 1, 32, 32) uint8 images (zero-padded from 28x28), labels 0..9."""
    files = locate(data_dir, download, progress)
    fingerprint = _fingerprint(files)
    decoded = cache_dir() / DECODED_NAME
    cached = load_decoded(decoded, DECODED_FORMAT, fingerprint)
    if cached is None:
        fresh = decode(files, progress)
        tensors, info = fresh["tensors"], fresh["info"]
        save_decoded(decoded, tensors, DECODED_FORMAT, fingerprint, info)
    else:
        tensors, info = cached
    folder = next(iter(files.values())).parent
    return DataSet(
        name=NAME,
        title=TITLE,
        train_x=tensors["train_x"],
        train_y=tensors["train_y"],
        test_x=tensors["test_x"],
        test_y=tensors["test_y"],
        classes=CLASSES,
        mean=MEAN,
        std=STD,
        digest=info["digest"],
        official=bool(info["official"]),
        source=str(folder.resolve()),
        note="28x28 grayscale, zero-padded by 2 pixels to 32x32, repeated into 3 channels",
        extra={"content_md5": info["content_md5"]},
    )
