"""Shared fixtures: a tiny CIFAR-100 archive in the original format, a loopback server for it.

Every test runs with ``REXSEARCH_DATA`` pointing to its own empty folder, the download URLs of
every data set (``REXSEARCH_CIFAR100_URL``, ``REXSEARCH_CIFAR10_URL``,
``REXSEARCH_FASHION_MNIST_URL``) pointing to a closed loopback port and no system-wide copy of
Fashion-MNIST, so no test reads the user's cache or Debian's files, or reaches the internet;
tests that need the data serve or pass the files themselves.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from cifar_archive import write_cifar_archive

from rexsearch.config import BlockConfig, ReXNetConfig
from rexsearch.datasets import fashion_mnist
from rexsearch.datasets.cifar import CIFAR100

ARCHIVE_NAME = CIFAR100.archive
NUM_CLASSES = CIFAR100.classes

#: Class names of the tiny archive.
CLASSES = tuple(f"class_{i:02d}" for i in range(NUM_CLASSES))


def class_patterned(per_class: int, seed: int = 0, noise: float = 24.0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (per_class * 100, 3, 32, 32) whose colour tells the class, and their labels.

    Class c gets one of 5 x 5 x 4 distinct RGB colours plus Gaussian noise, so a small
    network can learn the classes in a few epochs (crops and flips do not hide the colour).
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    levels = torch.stack([labels // 20, (labels // 4) % 5, labels % 4], dim=1).float()
    colours = 30 + levels * torch.tensor([195 / 4, 195 / 4, 195 / 3])
    images = colours.view(-1, 3, 1, 1) + noise * torch.randn(labels.numel(), 3, 32, 32, generator=gen)
    perm = torch.randperm(labels.numel(), generator=gen)
    return images.clamp(0, 255).round().to(torch.uint8)[perm], labels[perm]


@pytest.fixture(scope="session")
def patterned() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """:func:`class_patterned`, for tests in other modules."""
    return class_patterned


def tiny_config(width: int = 16) -> ReXNetConfig:
    """A 4-block ReXNet-style network (16-32 channels): trains in well under a second per epoch."""
    w = width
    return ReXNetConfig(
        blocks=(
            BlockConfig(w, w, expansion=1),
            BlockConfig(w, w + 8, expansion=4, stride=2, se=True),
            BlockConfig(w + 8, 2 * w, expansion=4, stride=2),
            BlockConfig(2 * w, 2 * w, expansion=4, se=True),
        ),
        stem_channels=w,
        se_ratio=4,
        penultimate_channels=64,
        num_classes=NUM_CLASSES,
        dropout=0.0,
        name="tiny",
    )


@pytest.fixture(scope="session")
def tiny() -> ReXNetConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(path, md5) of a tiny class-patterned ``cifar-100-python.tar.gz``: 5 train, 2 test images a class."""
    path = tmp_path_factory.mktemp("cifar") / ARCHIVE_NAME
    train_x, train_y = class_patterned(5, seed=1)
    test_x, test_y = class_patterned(2, seed=2)
    return path, write_cifar_archive(path, train_x, train_y, test_x, test_y, CLASSES)


@dataclass
class Served:
    """A directory served over loopback HTTP: the base URL and the paths requested so far."""

    base_url: str
    requests: list[str] = field(default_factory=list)

    def url(self, name: str = ARCHIVE_NAME) -> str:
        return f"{self.base_url}/{name}"


@contextmanager
def serve_directory(directory: Path) -> Iterator[Served]:
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; stopped on exit."""
    served = Served("")

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            served.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(directory)))
    served.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def cifar_server(cifar_archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The tiny archive served over loopback, with REXSEARCH_CIFAR100_URL/MD5 pointing to it."""
    path, md5 = cifar_archive
    with serve_directory(path.parent) as served:
        monkeypatch.setenv("REXSEARCH_CIFAR100_URL", served.url())
        monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", md5)
        yield served


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"


@pytest.fixture(autouse=True)
def _no_real_cifar(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the user's data cache and from the internet."""
    monkeypatch.setenv("REXSEARCH_DATA", str(tmp_path_factory.mktemp("cache")))
    closed = closed_port_url()
    for prefix in ("REXSEARCH_CIFAR100", "REXSEARCH_CIFAR10", "REXSEARCH_FASHION_MNIST"):
        monkeypatch.setenv(f"{prefix}_URL", closed)
        monkeypatch.delenv(f"{prefix}_MD5", raising=False)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the session's search tests (test_search, test_postgres); only what it
    started is shut down."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


def run_driver_script(script: str, *args: str, timeout: float = 300) -> dict:
    """Run ``script`` as its own Python driver (its own Ray, not the session's) and return the
    JSON object it prints last; fails the test with its stderr when it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage_run_args(run_dir, storage: str, study: str = "rexsearch") -> list[str]:
    """A short rank-only `rexsearch run` on ``storage`` (3 trials, 1 CPU each)."""
    return [
        "run",
        "--flops-budget",
        "200M",
        "--objectives",
        "rank",
        "--trials",
        "3",
        "--cpus-per-trial",
        "1",
        "--storage",
        storage,
        "--study-name",
        study,
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]


def study_counts(db: Path) -> dict[str, int]:
    """Trials per state in a SQLite study, read-only (empty while the file is missing or busy)."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("select state, count(*) from trials group by state").fetchall()
        con.close()
    except sqlite3.Error:
        return {}
    return dict(rows)


def sigterm_when(script: str, args: list[str], ready, env: dict[str, str], what: str) -> tuple[int, str]:
    """Run ``script`` as its own driver, send it SIGTERM once ``ready()`` holds (polled every
    50 ms, at most 120 s), and return its exit code and stderr; fails the test when the driver
    ends first or never gets ready. The driver is killed on any way out."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if ready():
                break
            if proc.poll() is not None:
                pytest.fail(f"{what} ended before SIGTERM: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail(f"{what} never got ready for SIGTERM")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err
