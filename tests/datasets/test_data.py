import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from support.cifar_archive import write_cifar_archive
from support.synthetic import CLASSES, class_patterned, serve_directory

from rexsearch.datasets import cifar, download
from rexsearch.datasets.base import DataError, DataSet, cache_dir, file_md5
from rexsearch.datasets.cifar import CIFAR100, load_cifar
from rexsearch.datasets.splits import search_split, stratified_subset

ARCHIVE_NAME, DECODED_NAME, FOLDER_NAME = CIFAR100.archive, CIFAR100.decoded, CIFAR100.folder


def load_cifar100(data_dir=None, download=True, progress=None) -> DataSet:
    return load_cifar(CIFAR100, data_dir, download, progress)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_archive_is_in_the_original_format(cifar_archive):
    path, md5 = cifar_archive
    assert file_md5(path) == md5
    with tarfile.open(path) as tar:
        assert {m.name for m in tar.getmembers()} >= {f"{FOLDER_NAME}/{m}" for m in ("train", "test", "meta")}
        train = pickle.load(tar.extractfile(f"{FOLDER_NAME}/train"), encoding="bytes")
        meta = pickle.load(tar.extractfile(f"{FOLDER_NAME}/meta"), encoding="bytes")
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (500, 3072)
    assert len(train[b"fine_labels"]) == len(train[b"coarse_labels"]) == 500
    assert meta[b"fine_label_names"][3] == b"class_03"


def test_download_verify_cache_and_no_second_download(cifar_server, tmp_path, monkeypatch):
    calls = []
    data = load_cifar100(progress=lambda kind, label, done, total: calls.append((done, total)))
    cache = cache_dir()
    size = (cache / ARCHIVE_NAME).stat().st_size
    assert cifar_server.requests == [f"/{ARCHIVE_NAME}"]
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    assert (cache / FOLDER_NAME).is_dir() and (cache / DECODED_NAME).is_file()
    assert _leftovers(cache) == []

    train_x, train_y = class_patterned(5, seed=1)
    test_x, test_y = class_patterned(2, seed=2)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (500, 3, 32, 32)
    assert data.train_y.dtype == torch.int64
    assert torch.equal(data.train_x, train_x) and torch.equal(data.train_y, train_y)
    assert torch.equal(data.test_x, test_x) and torch.equal(data.test_y, test_y)
    assert data.classes == CLASSES

    def no_decoding(spec, folder):
        raise AssertionError("the decoded cache should have been used")

    monkeypatch.setattr(cifar, "decode_folder", no_decoding)
    again = load_cifar100()
    assert cifar_server.requests == [f"/{ARCHIVE_NAME}"]
    assert torch.equal(again.train_x, data.train_x) and again.classes == data.classes


def test_md5_mismatch_removes_the_download(cifar_server, monkeypatch):
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", "0" * 32)
    with pytest.raises(DataError, match=r"expected 0{32}; the bad file was removed") as info:
        load_cifar100()
    assert cifar_server.url() in str(info.value)
    cache = cache_dir()
    assert not (cache / ARCHIVE_NAME).exists() and _leftovers(cache) == []


def test_no_network_names_the_three_ways_out():
    url = CIFAR100.url_now()
    with pytest.raises(DataError) as info:
        load_cifar100()
    message = str(info.value)
    assert url in message and str(cache_dir()) in message and "failed" in message
    assert "--data-dir" in message and "put the archive into" in message and "--objectives rank" in message
    assert message.count(". ") <= 2
    with pytest.raises(DataError, match="downloading is off"):
        load_cifar100(download=False)


def test_data_dir_archive_and_extracted_folder(cifar_archive, tmp_path, monkeypatch):
    path, md5 = cifar_archive
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", md5)
    local = tmp_path / "local"
    local.mkdir()
    (local / ARCHIVE_NAME).write_bytes(path.read_bytes())
    first = load_cifar100(local)
    assert (local / FOLDER_NAME).is_dir()
    (local / ARCHIVE_NAME).unlink()
    (local / DECODED_NAME).unlink()
    second = load_cifar100(local)  # the extracted folder, used as it is
    assert torch.equal(first.test_x, second.test_x)
    assert torch.equal(load_cifar100(local / FOLDER_NAME).train_y, first.train_y)


def test_local_archive_with_wrong_md5_is_refused(cifar_archive, tmp_path):
    path, _ = cifar_archive
    (tmp_path / ARCHIVE_NAME).write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"has md5 \w+, expected eb9058c3a382ffc7106e4002c42a8d85") as refused:
        load_cifar100(tmp_path)
    assert not (tmp_path / FOLDER_NAME).exists()
    # the user's own file: never "delete it" (that is only said of rexsearch's cached copy)
    assert "Put the original file there instead" in str(refused.value) and "Delete" not in str(refused.value)
    assert (tmp_path / ARCHIVE_NAME).exists()
    cached = cache_dir() / ARCHIVE_NAME
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="Delete it to download again"):
        load_cifar100(download=False)


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return file_md5(path)


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "evil",
    [
        ("cifar-100-python/../../evil", b"x"),
        ("/tmp/evil-absolute", b"x"),
    ],
)
def test_escaping_members_are_refused(tmp_path, monkeypatch, evil):
    root = tmp_path / "root"
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    members = [(f"{FOLDER_NAME}/{m}", b"payload") for m in ("train", "test", "meta")]
    md5 = _tar(data_dir / ARCHIVE_NAME, [*members, evil])
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", md5)
    with pytest.raises(DataError, match="outside the extraction folder"):
        load_cifar100(data_dir)
    assert sorted(p.name for p in root.rglob("*")) == sorted(["data", ARCHIVE_NAME])


def test_missing_member_is_named(tmp_path, monkeypatch):
    members = [(f"{FOLDER_NAME}/{m}", b"payload") for m in ("train", "meta")]
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", _tar(tmp_path / ARCHIVE_NAME, members))
    with pytest.raises(DataError, match="lacks the member cifar-100-python/test"):
        load_cifar100(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [ARCHIVE_NAME]


def test_pickles_cannot_run_code(tmp_path, monkeypatch):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = pickle.dumps({b"data": Evil(), b"fine_labels": []}, protocol=2)
    members = [(f"{FOLDER_NAME}/{m}", payload) for m in ("train", "test", "meta")]
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", _tar(tmp_path / ARCHIVE_NAME, members))
    with pytest.raises(DataError, match=r"not a CIFAR-100 pickle: refusing to load \w+\.print"):
        load_cifar100(tmp_path)


def test_search_split_is_stratified_disjoint_and_seeded():
    x, y = class_patterned(10, seed=3)
    data = DataSet("cifar100", "CIFAR-100", x, y, x[:0], y[:0], CLASSES, CIFAR100.mean, CIFAR100.std, "md5:x")
    split = search_split(data, val_images=300, train_images=200, seed=5)
    assert torch.equal(torch.bincount(split.val_y, minlength=100), torch.full((100,), 3))
    assert torch.equal(torch.bincount(split.train_y, minlength=100), torch.full((100,), 2))
    rows = {bytes(img.numpy()) for img in split.train_x} | {bytes(img.numpy()) for img in split.val_x}
    assert len(rows) == 500  # disjoint (the noisy images are all distinct)
    same = search_split(data, val_images=300, train_images=200, seed=5)
    assert torch.equal(same.train_x, split.train_x) and torch.equal(same.val_y, split.val_y)
    other = search_split(data, val_images=300, train_images=200, seed=6)
    assert not torch.equal(other.val_x, split.val_x)
    full = search_split(data, val_images=100, seed=5)
    assert full.train_y.numel() == 900
    with pytest.raises(DataError, match="--train-images must be between 1 and 900"):
        search_split(data, val_images=100, train_images=901)
    sub_x, sub_y = stratified_subset(x, y, 150, seed=1)
    assert sorted(torch.bincount(sub_y, minlength=100).tolist()) == [1] * 50 + [2] * 50
    assert sub_x.shape == (150, 3, 32, 32)


def test_served_loopback_directory_is_stopped(tmp_path):
    (tmp_path / "hello.txt").write_text("hi")
    import urllib.request

    with serve_directory(tmp_path) as served:
        assert urllib.request.urlopen(served.url("hello.txt"), timeout=5).read() == b"hi"
    assert served.requests == ["/hello.txt"]
    with pytest.raises(OSError):
        urllib.request.urlopen(served.url("hello.txt"), timeout=5)


def test_write_cifar_archive_rejects_wrong_class_count(tmp_path):
    x, y = class_patterned(1)
    with pytest.raises(ValueError, match="100 classes"):
        write_cifar_archive(tmp_path / ARCHIVE_NAME, x, y, x, y, CLASSES[:10])


def test_python2_era_numpy_pickles_load(tmp_path):
    """The original archive was pickled by Python 2 numpy (``numpy.core.multiarray``)."""
    payload = pickle.dumps({b"data": np.arange(6, dtype=np.uint8)}, protocol=2)
    legacy = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert legacy != payload
    (tmp_path / "train").write_bytes(legacy)
    assert cifar.read_pickle(tmp_path / "train")[b"data"].tolist() == list(range(6))


# ---------------------------------------------------------------------------- hostile archives
def _regular(name: str, payload: bytes = b"payload") -> tuple[str, bytes]:
    return (name, payload)


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def _symlink_chain(depth: int) -> list:
    """train -> l1 -> l2 -> ... -> l<depth> -> ../../victim, then data written through train."""
    links = [_link(f"{FOLDER_NAME}/l{i}", f"l{i + 1}", tarfile.SYMTYPE) for i in range(1, depth)]
    return [
        *links,
        _link(f"{FOLDER_NAME}/l{depth}", "../../victim", tarfile.SYMTYPE),
        _link(f"{FOLDER_NAME}/train", "l1", tarfile.SYMTYPE),
        _regular(f"{FOLDER_NAME}/train", b"overwritten"),
    ]


def _path_max_chain() -> list:
    """Nested long folder names reached through one-letter links, so that the resolved path of
    a final link passes PATH_MAX (where Python 3.11 < 3.11.13's realpath check gives up)."""
    long = "d" * 247
    members: list = []
    path = FOLDER_NAME
    for step in "abcdefghijklmnop":
        folder = tarfile.TarInfo(f"{path}/{long}")
        folder.type = tarfile.DIRTYPE
        members += [folder, _link(f"{path}/{step}", long, tarfile.SYMTYPE)]
        path = f"{path}/{long}"
    hops = "/".join("abcdefghijklmnop")
    members.append(_link(f"{FOLDER_NAME}/escape", f"{hops}/{'../' * 17}../victim", tarfile.SYMTYPE))
    members.append(_regular(f"{FOLDER_NAME}/escape", b"overwritten"))
    return members


def _dot_link_escape() -> list:
    """Links whose targets look inside (q -> ., p -> q/../..) but resolve one level up each."""
    return [
        _link(f"{FOLDER_NAME}/q", ".", tarfile.SYMTYPE),
        _link(f"{FOLDER_NAME}/p", "q/../..", tarfile.SYMTYPE),
        _regular(f"{FOLDER_NAME}/p/victim", b"overwritten"),
    ]


@pytest.mark.parametrize(
    ("evil", "kind"),
    [
        (_symlink_chain(1), "a symbolic link"),
        (_symlink_chain(12), "a symbolic link"),
        (_path_max_chain(), "a symbolic link"),
        (_dot_link_escape(), "a symbolic link"),
        ([_link(f"{FOLDER_NAME}/train", "etc/passwd", tarfile.LNKTYPE)], "a hard link"),
        ([_link(f"{FOLDER_NAME}/meta", f"{FOLDER_NAME}/train", tarfile.LNKTYPE)], "a hard link"),
        ([_special(f"{FOLDER_NAME}/fifo", tarfile.FIFOTYPE)], "a FIFO"),
        ([_special(f"{FOLDER_NAME}/tty", tarfile.CHRTYPE)], "a character device"),
    ],
    ids=[
        "symlink",
        "symlink-chain",
        "path-max-chain",
        "dot-link",
        "hardlink-etc",
        "hardlink-inside",
        "fifo",
        "device",
    ],
)
def test_link_device_and_fifo_members_are_refused_by_name(tmp_path, monkeypatch, evil, kind):
    root = tmp_path / "root"
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    (root / "victim").write_text("keep")
    (data_dir / "etc").mkdir()
    (data_dir / "etc" / "passwd").write_text("root:x:0:0")
    members = [_regular("etc/passwd", b"replaced"), *evil]
    members += [_regular(f"{FOLDER_NAME}/{m}") for m in ("train", "test", "meta")]
    md5 = _tar(data_dir / ARCHIVE_NAME, members)
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", md5)
    with pytest.raises(
        DataError, match=f"that is {kind}.*holds only regular files, so it is refused"
    ) as info:
        load_cifar100(data_dir)
    first = next(m for m in evil if isinstance(m, tarfile.TarInfo) and not m.isdir())
    assert f"member {first.name!r} that is" in str(info.value)
    assert (root / "victim").read_text() == "keep"
    assert (data_dir / "etc" / "passwd").read_text() == "root:x:0:0"
    assert sorted(p.name for p in root.rglob("*")) == sorted(
        ["data", "etc", "passwd", "victim", ARCHIVE_NAME]
    )


def test_only_the_three_members_are_written(tmp_path, monkeypatch):
    members = [
        _regular(f"{FOLDER_NAME}/file.txt~", b"stray"),
        _regular("README", b"elsewhere"),
        *[_regular(f"./{FOLDER_NAME}/{m}", m.encode()) for m in ("train", "test", "meta")],
    ]
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", _tar(tmp_path / ARCHIVE_NAME, members))
    folder = cifar.locate(CIFAR100, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "test", "train"]
    assert (folder / "test").read_bytes() == b"test"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ARCHIVE_NAME, FOLDER_NAME])


def test_repeated_member_is_refused(tmp_path, monkeypatch):
    members = [_regular(f"{FOLDER_NAME}/{m}") for m in ("train", "test", "meta", "train")]
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", _tar(tmp_path / ARCHIVE_NAME, members))
    with pytest.raises(DataError, match="holds the member 'cifar-100-python/train' twice"):
        load_cifar100(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [ARCHIVE_NAME]


def test_gzip_bomb_member_is_refused_before_it_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", 100_000)
    bomb = b"\0" * 2_000_000  # compresses to about 2 kB
    members = [
        _regular(f"{FOLDER_NAME}/train", bomb),
        _regular(f"{FOLDER_NAME}/test"),
        _regular(f"{FOLDER_NAME}/meta"),
    ]
    md5 = _tar(tmp_path / ARCHIVE_NAME, members)
    assert (tmp_path / ARCHIVE_NAME).stat().st_size < 10_000
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", md5)
    written = []
    monkeypatch.setattr(download, "write_member", lambda *a: written.append(a))
    with pytest.raises(DataError, match="'cifar-100-python/train' would decompress to 2,000,000 bytes, more"):
        load_cifar100(tmp_path)
    assert written == [] and [p.name for p in tmp_path.iterdir()] == [ARCHIVE_NAME]


def test_archive_inflating_past_the_total_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_BYTES", 200_000)
    skipped = [_regular(f"{FOLDER_NAME}/junk{i}", b"\0" * 50_000) for i in range(8)]
    members = [*skipped, *[_regular(f"{FOLDER_NAME}/{m}") for m in ("train", "test", "meta")]]
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", _tar(tmp_path / ARCHIVE_NAME, members))
    with pytest.raises(DataError, match="decompresses to more than 200,000 bytes"):
        load_cifar100(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [ARCHIVE_NAME]


def _pickled(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ([b"a", b"b"], "is not a flat list of int values"),
        ([1.5, 2.0], "is not a flat list of int values"),
        ([None, 3], "is not a flat list of int values"),
        ([10**30, 1], "got object"),
        ([True, False], "is not a flat list of int values"),
        ([0, 100], "got values from 0 to 100"),
        ([-1, 5], "got values from -1 to 5"),
        ([[0, 1], [2]], "is not a flat list of int values"),
    ],
)
def test_labels_that_are_not_integers_in_range_are_a_data_error(tmp_path, monkeypatch, labels, problem):
    split = _pickled({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": labels})
    meta = _pickled({b"fine_label_names": [c.encode() for c in CLASSES]})
    members = [(f"{FOLDER_NAME}/train", split), (f"{FOLDER_NAME}/test", split), (f"{FOLDER_NAME}/meta", meta)]
    monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", _tar(tmp_path / ARCHIVE_NAME, members))
    with pytest.raises(DataError, match=problem):
        load_cifar100(tmp_path)


def test_interrupted_download_and_extraction_leave_nothing_behind(cifar_server):
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f".{ARCHIVE_NAME}.part").write_bytes(b"half a download")  # killed while downloading
    (cache / f".{ARCHIVE_NAME}.k3j2h1.part").write_bytes(b"an older version's leftover")
    (cache / f".{FOLDER_NAME}.x1y2z3.part" / FOLDER_NAME).mkdir(parents=True)  # killed while extracting
    (cache / CIFAR100.lock).write_text("")  # its lock file, no longer locked by anyone
    load_cifar100()
    assert _leftovers(cache) == []
    assert sorted(p.name for p in cache.iterdir()) == sorted([ARCHIVE_NAME, FOLDER_NAME, DECODED_NAME])


def test_download_larger_than_the_cap_is_refused(cifar_server, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_DOWNLOAD_BYTES", 1000)
    with pytest.raises(DataError, match=r"is not the CIFAR-100 archive: the server announces [\d,]+ bytes"):
        load_cifar100()
    assert _leftovers(cache_dir()) == []


def test_download_without_length_is_capped_while_streaming(tmp_path, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Endless(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when the connection closes

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\0" * 10_000)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(cifar, "MAX_DOWNLOAD_BYTES", 50_000)
        monkeypatch.setenv("REXSEARCH_CIFAR100_URL", f"http://127.0.0.1:{server.server_address[1]}/x")
        with pytest.raises(DataError, match="it sent more than 50,000 bytes"):
            load_cifar100()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert list(cache_dir().iterdir()) == []


def test_the_archive_builder_gives_the_same_bytes_every_time(tmp_path, monkeypatch):
    """The stand-in archive of the committed examples (benchmarks/build_digits_archive.py) is built
    by write_cifar_archive: fixed tar and gzip metadata, so a rebuild later has the same md5."""
    import time

    x, y = class_patterned(1, seed=3)
    first = write_cifar_archive(tmp_path / "a.tar.gz", x[:70], y[:70], x[70:], y[70:], CLASSES)
    later = time.time() + 86_400
    monkeypatch.setattr(time, "time", lambda: later)  # a day later, as gzip sees the clock
    second = write_cifar_archive(tmp_path / "b.tar.gz", x[:70], y[:70], x[70:], y[70:], CLASSES)
    assert first == second


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("labels", "'fine_labels' is not a flat list of int values"),
        ("names", "'fine_label_names' is not a flat list of bytes or str values"),
        ("data", "'data' must be a uint8 array, got a list"),
    ],
)
def test_a_billion_laughs_pickle_is_refused_before_it_expands(tmp_path, monkeypatch, member, problem):
    """Lists that share references pass the archive's checksum and would expand into 2^40
    elements when read: refused from their shape, and the extracted folder is not kept."""
    from support.cifar_archive import cifar_batch, write_members

    bomb: list = [1]
    for _ in range(40):
        bomb = [bomb, bomb]
    x, y = class_patterned(1, seed=1)
    train = cifar_batch(x, y, "training batch 1 of 1", CIFAR100)
    test = cifar_batch(x[:10], y[:10], "testing batch 1 of 1", CIFAR100)
    meta = {b"fine_label_names": [c.encode() for c in CLASSES], b"coarse_label_names": []}
    if member == "labels":
        train[b"fine_labels"] = bomb
    elif member == "names":
        meta[b"fine_label_names"] = [bomb] * 100
    else:
        train[b"data"] = bomb
    archive = tmp_path / "dl" / CIFAR100.archive
    archive.parent.mkdir()
    write_members(archive, CIFAR100.folder, {"train": train, "test": test, "meta": meta})
    assert archive.stat().st_size < 1_000_000  # small on disk: the lists are references
    with serve_directory(archive.parent) as served:
        monkeypatch.setenv("REXSEARCH_CIFAR100_URL", served.url())
        monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", file_md5(archive))  # a mirror's own md5
        with pytest.raises(DataError, match=problem) as info:
            load_cifar(CIFAR100)
    assert "\n" not in str(info.value)
    assert not (cache_dir() / CIFAR100.folder).exists()
