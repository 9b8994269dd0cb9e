"""Own images: a folder with one sub-folder per class, decoded once and cached as uint8 arrays.

Layouts: ``ROOT/CLASS/*.png|jpg|jpeg`` (every image is a training image), or ``ROOT/train/CLASS/...``
with ``ROOT/val/CLASS/...`` (the search selects on these instead of holding out part of the
training images) and/or ``ROOT/test/CLASS/...`` (what ``rexsearch train`` reports). Images may lie
deeper inside a class folder; hidden files and folders are skipped, other file types are skipped
with a warning. Class names are the training class folders' names, sorted.

Each image is decoded with Pillow (PNG and JPEG only), turned into RGB (grayscale, palette and
16-bit images converted; transparency composited onto black), cropped to a centred square and
resized to the proxy resolution, once: the arrays are cached in
``$REXSEARCH_DATA/folders/DIGEST-RES.safetensors``, keyed by the folder's content digest (SHA-256
over every image's relative path, size and bytes). Files are hashed once: an index per folder
(``folders/index-*.json``) keeps each file's hash with its size and modification time, so a later
run reads only files that changed. Refused with a one-line error naming the file or folder:
an image Pillow cannot read, an empty class folder, a single class, no images at all, more than
:data:`MAX_IMAGES` images, a file over :data:`MAX_FILE_BYTES`, an image over :data:`MAX_PIXELS`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rexsearch.datasets.base import DataError, DataSet, Progress, cache_dir, one_line
from rexsearch.datasets.cache import load_decoded, save_decoded
from rexsearch.files import write_text_atomic

log = logging.getLogger(__name__)

NAME = "folder"
SUFFIXES = (".png", ".jpg", ".jpeg")
PARTS = ("train", "val", "test")
FORMAT = "rexsearch.folder/1"
INDEX_FORMAT = "rexsearch.folder-index/1"
CACHE_FOLDER = "folders"
#: Limits that keep a wrong folder from exhausting memory: images, bytes per file, pixels per image.
MAX_IMAGES = 1_000_000
MAX_FILE_BYTES = 64 * 2**20
MAX_PIXELS = 64_000_000

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class Entry:
    """One image file: its path, its path relative to the root (POSIX), size, mtime, part, class."""

    path: Path
    rel: str
    size: int
    mtime_ns: int
    part: str
    label: int


# ---------------------------------------------------------------------------- scanning
def _visible_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _layout(root: Path) -> dict[str, Path]:
    """The parts of ``root``: ``{"train": ROOT}`` or ``train``/``val``/``test`` sub-folders."""
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder; give a folder with one sub-folder per class")
    parts = {p: root / p for p in PARTS if (root / p).is_dir()}
    if "train" in parts:
        others = [p.name for p in _visible_dirs(root) if p.name not in PARTS]
        if others:
            raise DataError(
                f"{root} has train/ and other folders ({', '.join(others[:3])}); give either one folder "
                "per class, or train/ with val/ and/or test/ holding one folder per class each"
            )
        return parts
    if parts:
        raise DataError(
            f"{root} has {'/ and '.join(parts)}/ but no train/; put the training images into "
            f"{root / 'train'} (one folder per class)"
        )
    return {"train": root}


def _images_under(folder: Path) -> tuple[list[Path], list[Path]]:
    """PNG/JPEG files under ``folder`` (any depth, hidden ones skipped, links to folders not
    followed), sorted, and the other files skipped."""
    images, skipped = [], []
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(top, name)
            (images if path.suffix.lower() in SUFFIXES else skipped).append(path)
    return images, skipped


def scan(root: Path) -> tuple[tuple[str, ...], dict[str, list[Entry]]]:
    """The class names and, per part, the image files of ``root`` (refusals in the module doc)."""
    parts = _layout(root)
    classes = tuple(p.name for p in _visible_dirs(parts["train"]))
    if not classes:
        raise DataError(
            f"{parts['train']} holds no class folder; put the images into one sub-folder per class "
            f"(e.g. {parts['train'] / 'cat' / '0001.png'})"
        )
    if len(classes) == 1:
        raise DataError(
            f"{parts['train']} holds a single class folder ({classes[0]}); a classifier needs at least two"
        )
    index = {c: i for i, c in enumerate(classes)}
    found: dict[str, list[Entry]] = {}
    skipped: list[Path] = []
    total = 0
    for part, folder in parts.items():
        found[part] = []
        for class_dir in _visible_dirs(folder):
            if class_dir.name not in index:
                raise DataError(
                    f"{class_dir} is a class that {parts['train']} does not have; {part}/ may only hold "
                    f"the training classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
                )
            images, others = _images_under(class_dir)
            skipped += others
            if not images:
                raise DataError(
                    f"the class folder {class_dir} holds no PNG or JPEG image; add images or remove "
                    "the folder"
                )
            total += len(images)
            if total > MAX_IMAGES:
                raise DataError(f"{root} holds more than {MAX_IMAGES:,} images; use a smaller folder")
            for path in images:
                try:
                    st = path.stat()
                except OSError as exc:  # a broken link, a file removed while scanning
                    raise DataError(f"cannot read the image {path}: {exc.strerror or exc}") from None
                if st.st_size > MAX_FILE_BYTES:
                    raise DataError(
                        f"{path} has {st.st_size:,} bytes, more than the {MAX_FILE_BYTES:,} allowed per image"
                    )
                rel = path.relative_to(root).as_posix()
                found[part].append(Entry(path, rel, st.st_size, st.st_mtime_ns, part, index[class_dir.name]))
    for part in ("val", "test"):
        if part in parts and not found[part]:
            raise DataError(
                f"{parts[part]} holds no class folder with images; put its images into the training "
                f"classes' folders (e.g. {parts[part] / classes[0]}) or remove it"
            )
    if skipped:
        log.warning("skipped %d files that are not PNG or JPEG images (e.g. %s)", len(skipped), skipped[0])
    return classes, found


# ---------------------------------------------------------------------------- the content digest
def _in_threads(fn: Callable[[_T], _R], items: list[_T]) -> Iterator[_R]:
    """``map(fn, items)`` in a few threads (Pillow and hashlib release the GIL), in order."""
    workers = max(1, min(4, os.cpu_count() or 1))
    if workers == 1 or len(items) < 64:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="rexsearch-images")
    try:
        yield from pool.map(fn, items)
    finally:  # on an error, the images not yet decoded are not waited for
        pool.shutdown(wait=True, cancel_futures=True)


def entry_sha256(image: Entry) -> str:
    digest = hashlib.sha256()
    try:
        with open(image.path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read {image.path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _index_path(root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / CACHE_FOLDER / f"index-{key}.json"


def content_digest(root: Path, images: Iterable[Entry], progress: Progress | None = None) -> str:
    """SHA-256 over every image's relative path, size and bytes (hashes of unchanged files reused)."""
    images = sorted(images, key=lambda i: i.rel)
    index_file = _index_path(root)
    try:
        index = json.loads(index_file.read_text())
        known = index["files"] if index.get("format") == INDEX_FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    hashes: dict[str, str] = {}
    todo = []
    for image in images:
        entry = known.get(image.rel)
        if isinstance(entry, list) and entry[:2] == [image.size, image.mtime_ns]:
            hashes[image.rel] = entry[2]
        else:
            todo.append(image)
    for done, (image, sha) in enumerate(zip(todo, _in_threads(entry_sha256, todo), strict=True), 1):
        hashes[image.rel] = sha
        if progress and (done % 256 == 0 or done == len(todo)):
            progress("decode", f"hashing the images of {root}", done, len(todo))
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.rel}\0{image.size}\0{hashes[image.rel]}\n".encode())
    if todo:
        files = {i.rel: [i.size, i.mtime_ns, hashes[i.rel]] for i in images}
        try:
            index_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(
                index_file, json.dumps({"format": INDEX_FORMAT, "root": str(root), "files": files})
            )
        except OSError as exc:
            log.warning("cannot keep the hash index %s: %s", index_file, exc)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- decoding
def _rgb(img: Any) -> Any:
    """``img`` as an RGB image: transparency composited onto black, 16-bit values scaled to 8."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if img.mode.startswith("I"):  # 16- or 32-bit grayscale
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8), "L").convert(
            "RGB"
        )
    return img.convert("RGB")


def decode_image(path: Path, resolution: int) -> np.ndarray:
    """One image as uint8 (resolution, resolution, 3): RGB, centre square, resized (module doc)."""
    from PIL import Image, ImageOps

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise DataError(
                    f"{path} has {width} x {height} pixels, more than the {MAX_PIXELS:,} allowed per image"
                )
            img.draft("RGB", (resolution, resolution))  # JPEG: decode at a reduced scale (no-op for PNG)
            square = ImageOps.fit(_rgb(img), (resolution, resolution), Image.Resampling.BILINEAR)
            return np.asarray(square, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many types for bad files; each means "not readable"
        raise DataError(
            f"{path} cannot be read as a PNG or JPEG image ({one_line(exc)}); fix or remove it"
        ) from None


def _decode_all(images: list[Entry], resolution: int, label: str, progress: Progress | None) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(images), resolution, resolution, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        results = _in_threads(lambda i: decode_image(i.path, resolution), images)
        for n, array in enumerate(results):
            out[n] = array
            if progress and ((n + 1) % 256 == 0 or n + 1 == len(images)):
                progress("decode", label, n + 1, len(images))
    return out


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), of values scaled to [0, 1]."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        squares += (chunk * chunk).sum(dim=(0, 2, 3))
    count = max(1, x.shape[0] * x.shape[2] * x.shape[3])
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(max(float(v), 1e-3), 4) for v in std)


def load_folder(root: str | Path, resolution: int = 32, progress: Progress | None = None) -> DataSet:
    """An image folder as tensors (see the module doc); ``progress`` reports hashing and decoding."""
    root = Path(root).expanduser()
    classes, found = scan(root)
    everything = [i for images in found.values() for i in images]
    digest = content_digest(root, everything, progress)
    cache = cache_dir() / CACHE_FOLDER / f"{digest[:32]}-{resolution}.safetensors"
    source = f"{digest}:{resolution}"
    cached = load_decoded(cache, FORMAT, source)
    if cached is not None:
        tensors, info = cached
    else:
        tensors = {}
        done = 0
        for part, images in found.items():
            label = f"decoding the images of {root}"
            counted = _offset(progress, done, len(everything))
            array = _decode_all(images, resolution, label, counted)
            done += len(images)
            tensors[f"{part}_x"] = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
            tensors[f"{part}_y"] = torch.tensor([i.label for i in images], dtype=torch.int64)
        mean, std = channel_stats(tensors["train_x"])
        info = {"classes": list(classes), "mean": mean, "std": std, "parts": list(found)}
        save_decoded(cache, tensors, FORMAT, source, info)
    empty_x = torch.empty((0, 3, resolution, resolution), dtype=torch.uint8)
    empty_y = torch.empty(0, dtype=torch.int64)
    parts = info["parts"]
    layout = ", ".join(p + "/" for p in parts) if parts != ["train"] else "one folder per class"
    return DataSet(
        name=NAME,
        title=f"folder {root.resolve().name}",
        train_x=tensors["train_x"],
        train_y=tensors["train_y"],
        test_x=tensors.get("test_x", empty_x),
        test_y=tensors.get("test_y", empty_y),
        classes=tuple(info["classes"]),
        mean=tuple(info["mean"]),  # type: ignore[arg-type]
        std=tuple(info["std"]),  # type: ignore[arg-type]
        digest=f"sha256:{digest}",
        source=str(root.resolve()),
        val_x=tensors.get("val_x") if "val" in parts else None,
        val_y=tensors.get("val_y") if "val" in parts else None,
        note=f"own images ({layout}), centre-cropped and resized to {resolution}x{resolution} RGB",
        extra={"layout": parts, "resolution": resolution},
    )


def _offset(progress: Progress | None, before: int, total: int) -> Progress | None:
    """``progress`` counting from ``before`` of ``total`` (one bar over all parts)."""
    if progress is None:
        return None
    return lambda kind, label, done, _: progress(kind, label, before + done, total)
