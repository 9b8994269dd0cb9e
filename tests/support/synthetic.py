"""Tiny synthetic data and network: class-patterned images, a 4-block config, loopback serving."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from rexsearch.config import BlockConfig, ReXNetConfig
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


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"
