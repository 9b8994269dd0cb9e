"""Shared fixtures: a tiny CIFAR-100 archive in the original format, a loopback server for it.

Every test runs with ``REXSEARCH_DATA`` pointing to its own empty folder, the download URLs of
every data set (``REXSEARCH_CIFAR100_URL``, ``REXSEARCH_CIFAR10_URL``,
``REXSEARCH_FASHION_MNIST_URL``) pointing to a closed loopback port and no system-wide copy of
Fashion-MNIST, so no test reads the user's cache or Debian's files, or reaches the internet;
tests that need the data serve or pass the files themselves.

The helpers these fixtures use, and the tests import, are in the support package (tests/support/).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from support.cifar_archive import write_cifar_archive
from support.latency import RES, TINY_SPACE, draw_shapes
from support.synthetic import (
    ARCHIVE_NAME,
    CLASSES,
    Served,
    class_patterned,
    closed_port_url,
    serve_directory,
    tiny_config,
)

from rexsearch.config import ReXNetConfig
from rexsearch.datasets import fashion_mnist


@pytest.fixture(scope="session")
def patterned() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """:func:`class_patterned`, for tests in other modules."""
    return class_patterned


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


@pytest.fixture
def cifar_server(cifar_archive: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The tiny archive served over loopback, with REXSEARCH_CIFAR100_URL/MD5 pointing to it."""
    path, md5 = cifar_archive
    with serve_directory(path.parent) as served:
        monkeypatch.setenv("REXSEARCH_CIFAR100_URL", served.url())
        monkeypatch.setenv("REXSEARCH_CIFAR100_MD5", md5)
        yield served


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


@pytest.fixture(scope="session")
def space():
    """The tiny space of the latency tests (support.latency.TINY_SPACE)."""
    from rexsearch.space import parse_space

    return parse_space(TINY_SPACE, "tiny.yaml")


@pytest.fixture(scope="session")
def table(space):
    """A coarse one-thread latency table of the tiny space at RES, built once: the latency tests
    (tests/latency/, tests/space/test_solve.py) share it, as they did in one module."""
    from rexsearch.latency import build_table

    shapes = draw_shapes(space)
    return build_table(
        threads=1,
        resolution=RES,
        shapes=shapes,
        calibration=shapes[1::3][:3],
        points=3,
        warmup=1,
        repeats=2,
        activations=("silu", "relu6", "relu"),
    )
