"""Data sets as a concept: the registry, CIFAR-10, Fashion-MNIST (IDX) and own image folders:
finding, downloading, verifying, decoding and caching them, and their refusals (hostile archives,
IDX headers and images, caps).

Every file is built in its original format (tiny, class-patterned:
tests/support/dataset_files.py, tests/support/cifar_archive.py) and read from a folder or
served over loopback.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.cifar_archive import write_cifar10_archive
from support.dataset_files import (
    COLOURS,
    fashion_env,
    make_folder,
    patterned,
    write_fashion,
    write_image,
)
from support.synthetic import serve_directory

from rexsearch.datasets import (
    DATASETS,
    DataError,
    cifar,
    dataset_info,
    fashion_mnist,
    folder,
    load_dataset,
)
from rexsearch.datasets.base import cache_dir, file_md5
from rexsearch.datasets.cifar import CIFAR10
from rexsearch.datasets.splits import evaluation_split, search_split

CIFAR10_CLASSES = tuple(f"kind_{i}" for i in range(10))


# ---------------------------------------------------------------------------- the registry
def test_registry_names_the_data_sets_and_refuses_others():
    assert list(DATASETS) == ["cifar100", "cifar10", "fashion-mnist", "folder"]
    assert dataset_info("fashion-mnist").classes == 10 and dataset_info("folder").classes is None
    with pytest.raises(
        DataError, match="--dataset must be one of cifar100, cifar10, fashion-mnist, folder, got 'mnist'"
    ):
        load_dataset("mnist")
    with pytest.raises(DataError, match="--dataset folder needs --data-dir"):
        load_dataset("folder")


# ---------------------------------------------------------------------------- CIFAR-10
@pytest.fixture(scope="module")
def cifar10_archive(tmp_path_factory) -> tuple[Path, str, np.ndarray, np.ndarray]:
    x, y = patterned(8, 10, 32, 3, seed=4)
    tx, ty = patterned(2, 10, 32, 3, seed=5)
    path = tmp_path_factory.mktemp("cifar10") / CIFAR10.archive
    return path, write_cifar10_archive(path, x, y, tx, ty, CIFAR10_CLASSES), x, y


def test_cifar10_download_verify_decode_and_cache(cifar10_archive, monkeypatch):
    path, md5, x, y = cifar10_archive
    with serve_directory(path.parent) as served:
        monkeypatch.setenv("REXSEARCH_CIFAR10_URL", served.url(CIFAR10.archive))
        monkeypatch.setenv("REXSEARCH_CIFAR10_MD5", md5)
        calls = []
        data = load_dataset("cifar10", progress=lambda *a: calls.append(a))
        assert served.requests == [f"/{CIFAR10.archive}"]
    assert calls[-1][0] == "download" and calls[-1][2] == calls[-1][3] == path.stat().st_size
    assert data.train_x.shape == (80, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    assert torch.equal(data.train_x, torch.from_numpy(x)) and data.train_y.tolist() == y.tolist()
    assert data.classes == CIFAR10_CLASSES and data.num_classes == 10 and data.mean == CIFAR10.mean
    assert data.digest == f"md5:{md5}" and not data.official  # admitted by REXSEARCH_CIFAR10_MD5
    assert sorted(p.name for p in (cache_dir() / CIFAR10.folder).iterdir()) == sorted(CIFAR10.members)

    def no_decoding(spec, folder_):
        raise AssertionError("the decoded cache should have been used")

    monkeypatch.setattr(cifar, "decode_folder", no_decoding)
    again = load_dataset("cifar10")
    assert torch.equal(again.test_x, data.test_x) and again.identity()["train_images"] == 80


def test_cifar10_local_archive_with_the_wrong_md5_is_refused(cifar10_archive, tmp_path):
    path, _, _, _ = cifar10_archive
    (tmp_path / CIFAR10.archive).write_bytes(path.read_bytes())
    with pytest.raises(DataError, match=f"expected {CIFAR10.md5}: it is incomplete or not the CIFAR-10"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / CIFAR10.folder).exists()


def _tar(path: Path, members: list) -> str:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return file_md5(path)


def _cifar10_members(payload: bytes = b"x") -> list:
    return [(f"{CIFAR10.folder}/{m}", payload) for m in CIFAR10.members]


def test_cifar10_pickles_go_through_the_restricted_unpickler(tmp_path, monkeypatch):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    monkeypatch.setenv("REXSEARCH_CIFAR10_MD5", _tar(tmp_path / CIFAR10.archive, _cifar10_members(payload)))
    with pytest.raises(DataError, match=r"not a CIFAR-10 pickle: refusing to load \w+\.print"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_hostile_archives_are_refused(tmp_path, monkeypatch):
    import tarfile

    link = tarfile.TarInfo(f"{CIFAR10.folder}/data_batch_1")
    link.type, link.linkname = tarfile.SYMTYPE, "../../victim"
    evil = [link, *_cifar10_members()]
    monkeypatch.setenv("REXSEARCH_CIFAR10_MD5", _tar(tmp_path / CIFAR10.archive, evil))
    with pytest.raises(DataError, match=r"is a symbolic link.*CIFAR-10 archive holds only regular files"):
        load_dataset("cifar10", tmp_path)
    escape = tmp_path / "escape"
    escape.mkdir()
    monkeypatch.setenv(
        "REXSEARCH_CIFAR10_MD5", _tar(escape / CIFAR10.archive, [*_cifar10_members(), ("../evil", b"x")])
    )
    with pytest.raises(DataError, match="outside the extraction folder"):
        load_dataset("cifar10", escape)
    missing = tmp_path / "missing"
    missing.mkdir()
    monkeypatch.setenv("REXSEARCH_CIFAR10_MD5", _tar(missing / CIFAR10.archive, _cifar10_members()[1:]))
    with pytest.raises(DataError, match="lacks the member cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", missing)
    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", 10_000)
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    monkeypatch.setenv(
        "REXSEARCH_CIFAR10_MD5", _tar(bomb / CIFAR10.archive, _cifar10_members(b"\0" * 1_000_000))
    )
    with pytest.raises(DataError, match="would decompress to 1,000,000 bytes"):
        load_dataset("cifar10", bomb)
    assert not (tmp_path / "victim").exists() and not (tmp_path / "evil").exists()
    assert sorted(p.name for p in bomb.iterdir()) == [CIFAR10.archive]


# ---------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_from_data_dir_padded_verified_and_cached(tmp_path, monkeypatch):
    sums = write_fashion(tmp_path / "fm")
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", fashion_env(sums))
    data = load_dataset("fashion-mnist", tmp_path / "fm")
    assert data.train_x.shape == (200, 1, 32, 32) and data.test_x.shape == (40, 1, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    border = torch.cat([data.train_x[..., :2, :].flatten(), data.train_x[..., -2:, :].flatten()])
    assert int(border.max()) == 0 and int(data.train_x[..., :, :2].max()) == 0  # zero padding, 2 pixels
    raw = np.frombuffer(
        gzip.decompress((tmp_path / "fm" / "train-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8
    )
    assert torch.equal(data.train_x[:, 0, 2:30, 2:30], torch.from_numpy(raw.reshape(-1, 28, 28).copy()))
    assert data.classes[0] == "T-shirt/top" and data.mean == fashion_mnist.MEAN
    assert not data.official and data.digest.startswith("md5:")
    identity = data.identity()
    assert identity["image_shape"] == [1, 32, 32] and identity["content_md5"]["t10k-labels-idx1-ubyte"]
    assert list(tmp_path.joinpath("fm").iterdir()) and (cache_dir() / fashion_mnist.DECODED_NAME).is_file()

    monkeypatch.setattr(fashion_mnist, "decode", lambda *a: pytest.fail("the decoded cache should be used"))
    assert load_dataset("fashion-mnist", tmp_path / "fm").digest == data.digest


def test_fashion_mnist_uncompressed_files_and_a_read_only_system_copy(tmp_path, monkeypatch):
    """Debian recompressed the files: a system copy is verified by its content's md5, and read only."""
    plain = write_fashion(tmp_path / "plain", gz=False)
    system = tmp_path / "usr-share"
    sums = write_fashion(system, level=1)  # recompressed: other .gz md5s, the same content
    assert fashion_env(sums, "content") == fashion_env(plain, "content")
    assert fashion_env(sums) != fashion_env(write_fashion(tmp_path / "nine", level=9))
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", fashion_env(sums, "content"))
    from_plain = load_dataset("fashion-mnist", tmp_path / "plain")
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (system,))
    system.chmod(0o555)
    try:
        found = load_dataset("fashion-mnist")  # no --data-dir, nothing in the cache: the system copy
    finally:
        system.chmod(0o755)
    assert found.source == str(system.resolve()) and found.digest == from_plain.digest
    assert torch.equal(found.train_x, from_plain.train_x)
    assert sorted(p.name for p in system.iterdir()) == sorted(f"{n}.gz" for n in fashion_mnist.FILES)


def test_fashion_mnist_download_over_loopback(tmp_path, monkeypatch):
    sums = write_fashion(tmp_path / "served")
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", fashion_env(sums))
    with serve_directory(tmp_path / "served") as served:
        monkeypatch.setenv("REXSEARCH_FASHION_MNIST_URL", served.base_url)  # a base URL, no slash
        data = load_dataset("fashion-mnist")
        again = load_dataset("fashion-mnist")
    assert served.requests == [f"/{n}.gz" for n in fashion_mnist.FILES]
    kept = cache_dir() / fashion_mnist.FOLDER
    assert sorted(p.name for p in kept.iterdir()) == sorted(f"{n}.gz" for n in fashion_mnist.FILES)
    assert again.digest == data.digest and data.train_y.numel() == 200


def test_fashion_mnist_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    write_fashion(tmp_path / "served")
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", ",".join(["0" * 32] * 4))
    with serve_directory(tmp_path / "served") as served:
        monkeypatch.setenv("REXSEARCH_FASHION_MNIST_URL", served.base_url + "/")
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz has md5 \w+, and neither it nor"):
            load_dataset("fashion-mnist")
    kept = cache_dir() / fashion_mnist.FOLDER
    assert list(kept.iterdir()) == []  # the bad download was removed, the lock released
    with pytest.raises(
        DataError, match=r"expected 0{32}: it is incomplete or not Fashion-MNIST's train-images"
    ):
        load_dataset("fashion-mnist", tmp_path / "served")
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", "abc")
    with pytest.raises(DataError, match="REXSEARCH_FASHION_MNIST_MD5 must be four md5s"):
        load_dataset("fashion-mnist", tmp_path / "served")
    monkeypatch.delenv("REXSEARCH_FASHION_MNIST_MD5")
    with pytest.raises(
        DataError, match="expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d or f4a8712d7a061bf5bd6d2ca38dc4d50a"
    ):
        load_dataset("fashion-mnist", tmp_path / "served")  # the official checksums, .gz or content


def test_fashion_mnist_missing_files_name_the_ways_out(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", download=False)
    assert "downloading is off" in str(info.value) and "dataset-fashion-mnist" in str(info.value)
    with pytest.raises(DataError, match=r"the download from http://127.0.0.1:.* failed"):
        load_dataset("fashion-mnist")
    write_fashion(tmp_path / "part")
    (tmp_path / "part" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"holds part of Fashion-MNIST but not t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", tmp_path / "part")


def _hostile_idx(directory: Path, name: str, payload: bytes, gz: bool = True) -> str:
    sums = write_fashion(directory)
    path = directory / f"{name}.gz"
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    sums[name] = {"file": file_md5(path), "content": hashlib.md5(payload).hexdigest()}
    return fashion_env(sums)


@pytest.mark.parametrize(
    ("name", "payload", "problem"),
    [
        (
            "train-images-idx3-ubyte",
            struct.pack(">4i", 2051, 10**9, 28, 28) + b"\0" * 784,
            r"header claims 1,000,000,000 items \(784,000,000,000 bytes\), more than",
        ),
        (
            "train-images-idx3-ubyte",
            struct.pack(">4i", 1234, 2, 28, 28) + b"\0" * 1568,
            "magic number is 1234, expected 2051",
        ),
        (
            "train-labels-idx1-ubyte",
            struct.pack(">4i", 2051, 2, 28, 28),
            "not an IDX label file: its magic number is 2051",
        ),
        (
            "train-images-idx3-ubyte",
            struct.pack(">4i", 2051, 2, 32, 32),
            "has dimensions 2 x 32 x 32, expected N x 28 x 28",
        ),
        (
            "train-images-idx3-ubyte",
            struct.pack(">4i", 2051, 5, 28, 28) + b"\0" * 1000,
            "is truncated: its header claims 5",
        ),
        ("train-images-idx3-ubyte", struct.pack(">2i", 2051, 5), "is truncated: it ends inside its header"),
        (
            "t10k-labels-idx1-ubyte",
            struct.pack(">2i", 2049, 3) + b"\0\1\2\3",
            "holds more data than its header says",
        ),
        ("t10k-labels-idx1-ubyte", struct.pack(">2i", 2049, 40) + bytes(range(30, 70)), "has a label 69"),
        ("t10k-labels-idx1-ubyte", struct.pack(">2i", 2049, 3) + b"\0\1\2", "holds 3 labels for 40 images"),
    ],
    ids=[
        "huge-count",
        "magic",
        "labels-magic",
        "dimensions",
        "truncated",
        "short-header",
        "overlong",
        "label",
        "count",
    ],
)
def test_hostile_idx_files_are_refused_by_name(tmp_path, monkeypatch, name, payload, problem):
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", _hostile_idx(tmp_path, name, payload))
    with pytest.raises(DataError, match=problem) as info:
        load_dataset("fashion-mnist", tmp_path)
    assert "\n" not in str(info.value)
    assert not (cache_dir() / fashion_mnist.DECODED_NAME).exists()


def test_a_truncated_gzip_stream_is_refused(tmp_path, monkeypatch):
    sums = write_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    sums["train-images-idx3-ubyte"]["file"] = file_md5(path)
    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", fashion_env(sums))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is damaged or truncated"):
        load_dataset("fashion-mnist", tmp_path)


def test_a_huge_idx_header_is_refused_before_reading_the_pixels(tmp_path, monkeypatch):
    """The cap applies to the header's claim: the body is never read (nor allocated)."""
    reads: list[int] = []
    real = fashion_mnist.read_exact
    monkeypatch.setattr(fashion_mnist, "read_exact", lambda s, n: (reads.append(n), real(s, n))[1])
    payload = struct.pack(">4i", 2051, 10**9, 28, 28)
    monkeypatch.setenv(
        "REXSEARCH_FASHION_MNIST_MD5", _hostile_idx(tmp_path, "train-images-idx3-ubyte", payload)
    )
    with pytest.raises(DataError, match="claims 1,000,000,000 items"):
        load_dataset("fashion-mnist", tmp_path)
    assert max(reads) == 16


# ---------------------------------------------------------------------------- own image folders
def test_folder_decoded_resized_cached_and_keyed_by_content(tmp_path):
    root = make_folder(tmp_path / "pets")
    write_image(root / "cat" / "deep" / "x.png", COLOURS["cat"], (64, 16))  # deeper inside a class folder
    Image.new("L", (20, 20), 128).save(root / "dog" / "grey.png")
    Image.new("P", (20, 20), 0).save(root / "dog" / "palette.png")
    Image.new("RGBA", (20, 20), (255, 255, 255, 0)).save(root / "eel" / "clear.png")
    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(root / "eel" / "sixteen.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"skipped")
    seen = []
    data = load_dataset("folder", root, progress=lambda *a: seen.append(a))
    assert data.classes == ("cat", "dog", "eel") and data.num_classes == 3
    assert data.train_x.shape == (23, 3, 32, 32) and data.test_y.numel() == 0 and data.val_x is None
    assert torch.bincount(data.train_y).tolist() == [7, 8, 8]
    cats = data.train_x[data.train_y == 0].float().mean(dim=(0, 2, 3))
    assert cats[0] > 200 and cats[1] < 50  # red, whatever the size and format
    # per class in name order: 0.jpg ... 5.png, then grey, palette (dog) or clear, sixteen (eel)
    dogs, eels = data.train_x[data.train_y == 1], data.train_x[data.train_y == 2]
    assert dogs[6, :, 16, 16].tolist() == [128, 128, 128]  # grayscale to RGB
    assert eels[6, :, 16, 16].tolist() == [0, 0, 0]  # transparency composited onto black
    assert eels[7, :, 16, 16].tolist() == [255, 255, 255]  # 16-bit white
    assert seen[-1] == ("decode", f"decoding the images of {root}", 23, 23)
    assert data.digest.startswith("sha256:") and data.identity()["classes"] == 3
    assert all(0 < m < 1 for m in data.mean) and all(0 < s < 1 for s in data.std)

    decoded = lambda *a: pytest.fail("the decoded cache should be used")  # noqa: E731
    hashed = lambda *a: pytest.fail("unchanged files are not hashed again")  # noqa: E731
    with pytest.MonkeyPatch.context() as m:
        m.setattr(folder, "decode_image", decoded)
        m.setattr(folder, "entry_sha256", hashed)
        again = load_dataset("folder", root)
    assert again.digest == data.digest and torch.equal(again.train_x, data.train_x)
    write_image(root / "cat" / "0.jpg", (200, 200, 0))
    changed = load_dataset("folder", root)
    assert changed.digest != data.digest
    assert load_dataset("folder", root, resolution=16).train_x.shape == (23, 3, 16, 16)


def test_folder_with_train_val_and_test(tmp_path):
    root = make_folder(tmp_path / "split", {"train": 6, "val": 2, "test": 3})
    data = load_dataset("folder", root)
    assert data.train_y.numel() == 18 and data.val_y.numel() == 6 and data.test_y.numel() == 9
    split = search_split(data, None, None, seed=1)
    assert split.val_y.numel() == 6 and split.train_y.numel() == 18 and split.num_classes == 3
    assert split.dataset["split"]["validation"] == "val/" and split.mean == data.mean
    assert search_split(data, 3, 9, seed=1).val_y.numel() == 3
    with pytest.raises(DataError, match=r"--val-images must be between 1 and 6 \(the images in val/\)"):
        search_split(data, 7)
    assert evaluation_split(data).what == "test"
    flat = load_dataset("folder", make_folder(tmp_path / "flat", {"": 20}))
    held = search_split(flat, None, None)
    assert held.val_y.numel() == 6 and torch.bincount(held.val_y).tolist() == [2, 2, 2]
    assert "held-out" in evaluation_split(flat).what


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda r: (r / "cat").mkdir(parents=True) or (r / "dog").mkdir(), "holds no PNG or JPEG image"),
        (lambda r: make_folder(r, classes=("cat",)), r"holds a single class folder \(cat\)"),
        (lambda r: r.mkdir(), "holds no class folder"),
        (
            lambda r: make_folder(r) and (r / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"),
            "dog/3.png cannot be read",
        ),
        (
            lambda r: (
                make_folder(r) and (r / "cat" / "0.jpg").write_bytes((r / "cat" / "0.jpg").read_bytes()[:200])
            ),
            "cat/0.jpg cannot be read as a PNG or JPEG image",
        ),
        (
            lambda r: (
                make_folder(r, {"train": 2})
                and make_folder(r / "val", {"": 1}, ("cat", "eel"))
                and write_image(r / "val" / "fox" / "0.png", (1, 2, 3))
            ),
            "is a class that",
        ),
        (lambda r: make_folder(r, {"val": 2}), "has val/ but no train/"),
        (lambda r: make_folder(r, {"train": 2, "cat": 1}), "has train/ and other folders"),
        (lambda r: r.parent.mkdir(exist_ok=True) or r.write_text("x"), "is not a folder"),
        (
            lambda r: make_folder(r, {"train": 2}) and (r / "val").mkdir(),
            "val holds no class folder with images",
        ),
        (
            lambda r: make_folder(r) and (r / "cat" / "9.png").symlink_to(r / "gone.png"),
            "cannot read the image",
        ),
    ],
    ids=[
        "empty-class",
        "single-class",
        "no-images",
        "corrupt-png",
        "truncated-jpeg",
        "foreign-class",
        "val-only",
        "mixed",
        "file",
        "empty-val",
        "broken-link",
    ],
)
def test_folder_refusals_name_the_problem_in_one_line(tmp_path, build, problem):
    root = tmp_path / "images"
    build(root)
    with pytest.raises(DataError, match=problem) as info:
        load_dataset("folder", root)
    assert "\n" not in str(info.value)
    assert not list((cache_dir() / folder.CACHE_FOLDER).glob("*.safetensors"))


def test_folder_caps(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "big")
    monkeypatch.setattr(folder, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match=r"cat/4.jpg has 34 x 32 pixels, more than the 1,000 allowed"):
        load_dataset("folder", root)
    monkeypatch.setattr(folder, "MAX_IMAGES", 10)
    with pytest.raises(DataError, match="holds more than 10 images"):
        load_dataset("folder", root)


def test_a_dripping_server_is_given_up_in_one_line(tmp_path, monkeypatch):
    """A server that sends a byte now and then never trips the per-read timeout: the download's
    minimum rate does, and nothing of it stays in the cache."""
    import http.server
    import threading
    import time

    from rexsearch.datasets import download

    stop = threading.Event()

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while not stop.is_set():
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(download, "RATE_GRACE_S", 1.0)
    monkeypatch.setattr(download, "MIN_RATE_BYTES_S", 1024)
    monkeypatch.setenv("REXSEARCH_CIFAR10_URL", f"http://127.0.0.1:{server.server_port}/{CIFAR10.archive}")
    try:
        start = time.monotonic()
        with pytest.raises(DataError, match="too slow") as info:
            load_dataset("cifar10")
        assert time.monotonic() - start < 20
        assert "\n" not in str(info.value)
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not [p for p in cache_dir().rglob("*") if p.is_file()]
