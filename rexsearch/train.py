"""Proxy training: a config's proxy trained with SGD on uint8 tensors kept on the device.

The network is ``build_model(proxy_config(config, resolution, num_classes))`` (see
:mod:`rexsearch.proxy`), its classifier as wide as the data set has classes. Recipe: SGD
with Nesterov momentum, linear warm-up then cosine decay (per step), label smoothing,
weight decay on conv/linear weights only (not on BatchNorm or biases). Batches are cut
from the images on the device, augmented there (:mod:`rexsearch.augment`) and normalised
with the data set's channel statistics (a grayscale set repeated into the stem's three
channels); the model runs channels-last, with bfloat16 autocast on CUDA.

Fidelity knobs: epochs, training images (the split's size), batch size, resolution.
Accuracies are fractions in [0, 1]. With the same seed and thread count, training on
the CPU gives the same numbers every time: each epoch reseeds the shuffling,
augmentation and dropout from ``(seed, epoch)``, so a resumed training continues
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from rexsearch.allocator import steady_allocator
from rexsearch.augment import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    Stats,
    augment_batch,
    channels_last,
    normalize,
    take,
)
from rexsearch.checkpoints import CHECKPOINT_JSON, save_state
from rexsearch.config import ReXNetConfig
from rexsearch.datasets.splits import Split
from rexsearch.errors import UserError
from rexsearch.files import atomic_write, loads_json, read_text_file, write_text_atomic
from rexsearch.model import build_model
from rexsearch.proxy import PROXY_CLASSES, PROXY_RESOLUTION, proxy_config

#: ``progress(steps_done, steps_total)`` over the whole training.
StepProgress = Callable[[int, int], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (diverged); the trial should count as failed."""


#: Upper limits of :class:`TrainSettings`: far above any proxy or full training, low enough
#: that a typo is refused instead of exhausting memory or running for years.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_RESOLUTION = 2048


def _bad(name: str, what: str, value: Any) -> UserError:
    shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:57]}..."
    return UserError(f"{name} must be {what}, got {shown}")


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters and fidelity of one proxy training (``lr`` is for ``batch_size``)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    resolution: int = PROXY_RESOLUTION
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True
    amp: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        """Validate every number once, for ``rexsearch train`` and the search alike.

        A bad value (wrong type, out of range, NaN or infinite) raises a UserError naming
        the setting (exit 2), before any model, data or file is touched.
        """
        ints = [
            ("epochs", 1, MAX_EPOCHS, "a positive integer"),
            ("batch_size", 2, MAX_BATCH_SIZE, "an integer >= 2 (BatchNorm needs two images)"),
            ("resolution", 8, MAX_RESOLUTION, "an integer >= 8"),
            ("seed", 0, 2**32 - 1, "an integer in [0, 2^32)"),
        ]
        for name, low, high, what in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise _bad(name, what, value)
            if value > high:
                raise _bad(name, f"at most {high:,}", value)
        reals = [
            ("lr", lambda v: v > 0, "a finite positive number"),
            ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("weight_decay", lambda v: v >= 0, "a finite number >= 0"),
            ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("warmup_epochs", lambda v: 0 <= v <= self.epochs, "between 0 and epochs"),
        ]
        for name, ok, what in reals:
            value = getattr(self, name)
            real = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (real and math.isfinite(value) and ok(value)):
                raise _bad(name, what, value)
        if not isinstance(self.device, str):
            raise _bad("device", "auto, cpu, cuda or cuda:N", self.device)
        for name in ("channels_last", "amp", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "true or false", getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochMetrics:
    """One finished epoch: mean training loss, top-1 on the evaluation set, timing.

    ``epoch`` counts from 1 (the number of epochs finished so far); ``seconds`` is the
    whole epoch (training and evaluation); ``images_per_s`` is the training throughput
    (images trained / training seconds).
    """

    epoch: int
    train_loss: float
    val_top1: float
    seconds: float
    images_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """The outcome of :func:`train_proxy`; accuracies are fractions in [0, 1].

    ``train_seconds`` is the wall time of all epochs (with evaluation); ``images_per_s``
    the median training throughput over epochs; ``model`` the trained network, on the
    training device.
    """

    accuracy_curve: list[float]
    best_accuracy: float
    final_accuracy: float
    train_seconds: float
    images_per_s: float
    model: nn.Module
    history: list[EpochMetrics] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; any other name is taken as it is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay for conv and linear weights; none for BatchNorm parameters and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch + 1) % (2**63)


@contextmanager
def own_rng(device: torch.device) -> Iterator[None]:
    """Keep the caller's global RNG state untouched by model init and dropout."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


class Trainer:
    """Model, optimizer and schedule of one proxy training, run epoch by epoch.

    :func:`train_proxy` is the one-call form; ``rexsearch train`` uses the class to
    checkpoint after every epoch and resume (:func:`save_checkpoint`, :func:`load_checkpoint`).
    ``num_classes`` is the data set's (the classifier's width); ``mean`` and ``std`` its channel
    statistics (of values in [0, 1]), which inputs are normalised with.
    """

    def __init__(
        self,
        config: ReXNetConfig,
        settings: TrainSettings,
        train_images: int,
        num_classes: int = PROXY_CLASSES,
        mean: Stats = CIFAR100_MEAN,
        std: Stats = CIFAR100_STD,
    ) -> None:
        if train_images < 2:
            raise UserError(f"training needs at least 2 images, got {train_images}")
        # glibc would map and fault the largest activation and gradient buffers afresh on
        # every step (benchmarks/bench_allocator.py measures what that costs)
        steady_allocator()
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.config = proxy_config(config, settings.resolution, num_classes=num_classes)
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        with own_rng(self.device):
            torch.manual_seed(settings.seed)
            self.model = build_model(self.config).to(self.device, memory_format=self.memory_format)
        self.batch_size = min(settings.batch_size, train_images)
        self.steps_per_epoch = max(1, train_images // self.batch_size)
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.warmup_steps = round(settings.warmup_epochs * self.steps_per_epoch)
        self.optimizer = torch.optim.SGD(
            _param_groups(self.model, settings.weight_decay),
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.momentum > 0,
            fused=self.device.type in ("cpu", "cuda"),  # one kernel for all parameters
        )
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.model) if settings.compile else self.model
        )
        use_amp = settings.amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self._autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else (lambda: nullcontext())
        )
        self.epoch = 0
        self.history: list[EpochMetrics] = []

    # ------------------------------------------------------------------ pieces
    def lr_at(self, step: int) -> float:
        """Learning rate of global step ``step``: linear warm-up, then cosine to zero."""
        base = self.settings.lr
        if step < self.warmup_steps:
            return base * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        return 0.5 * base * (1.0 + math.cos(math.pi * (step - self.warmup_steps) / span))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) on the device, channels-last (the layout batches are cut from)."""
        return channels_last(images.to(self.device))

    def _input(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=self.memory_format)

    def train_epoch(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        progress: StepProgress | None = None,
        max_steps: int | None = None,
    ) -> tuple[float, float, int]:
        """One epoch over prepared ``images``: (mean loss, seconds, images trained).

        Raises :class:`NonFiniteLossError` when the loss is not finite (checked every
        step on the CPU, every 25 steps on a GPU to avoid syncs).
        """
        with own_rng(self.device):
            torch.manual_seed(_epoch_seed(self.settings.seed, self.epoch))
            return self._train_epoch(images, labels, progress, max_steps)

    def _train_epoch(
        self, images: torch.Tensor, labels: torch.Tensor, progress: StepProgress | None, max_steps: int | None
    ) -> tuple[float, float, int]:
        model, opt, settings = self.model, self.optimizer, self.settings
        gen = torch.Generator(device=self.device).manual_seed(_epoch_seed(settings.seed, self.epoch))
        check_every = 1 if self.device.type == "cpu" else 25
        steps = min(self.steps_per_epoch, max_steps or self.steps_per_epoch)
        order = torch.randperm(labels.numel(), generator=gen, device=self.device)
        labels = labels.to(self.device)
        model.train()
        total = torch.zeros((), device=self.device)
        start = time.perf_counter()
        for i in range(steps):
            step = self.epoch * self.steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = self.lr_at(step)
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = augment_batch(take(images, index), gen, settings.resolution, mean=self.mean, std=self.std)
            x = self._input(batch)
            with self._autocast():
                loss = F.cross_entropy(
                    self.forward(x), labels.index_select(0, index), label_smoothing=settings.label_smoothing
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            if ((i + 1) % check_every == 0 or i + 1 == steps) and not torch.isfinite(total):
                raise NonFiniteLossError(
                    f"the training loss became NaN or infinite by epoch {self.epoch + 1}, step {i + 1} "
                    f"(learning rate {self.lr_at(step):.3g}): the training diverged"
                )
            if progress:
                progress(step + 1, self.total_steps)
        mean_loss = total.item() / steps
        return mean_loss, time.perf_counter() - start, steps * self.batch_size

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
        """Top-1 accuracy (a fraction) on prepared ``images`` with int64 ``labels``."""
        settings = self.settings
        return evaluate_top1(
            self.model,
            images,
            labels,
            batch_size,
            settings.resolution,
            self.memory_format,
            self._autocast,
            self.mean,
            self.std,
        )

    def fit(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        val_x: torch.Tensor,
        val_y: torch.Tensor,
        callback: Callable[[EpochMetrics], None] | None = None,
        progress: StepProgress | None = None,
    ) -> TrainResult:
        """Train from ``self.epoch`` to ``settings.epochs``; ``callback`` runs after every epoch.

        The callback may raise to stop training (the exception propagates).
        """
        train_images, val_images = self.prepare(train_x), self.prepare(val_x)
        train_y, val_y = train_y.to(self.device), val_y.to(self.device)
        while self.epoch < self.settings.epochs:
            start = time.perf_counter()
            loss, train_s, trained = self.train_epoch(train_images, train_y, progress)
            top1 = self.evaluate(val_images, val_y)
            metrics = EpochMetrics(
                self.epoch + 1, loss, top1, time.perf_counter() - start, trained / max(train_s, 1e-9)
            )
            self.epoch += 1
            self.history.append(metrics)
            if callback:
                callback(metrics)
        return self.result()

    def result(self) -> TrainResult:
        curve = [m.val_top1 for m in self.history]
        return TrainResult(
            accuracy_curve=curve,
            best_accuracy=max(curve, default=0.0),
            final_accuracy=curve[-1] if curve else 0.0,
            train_seconds=sum(m.seconds for m in self.history),
            images_per_s=statistics.median(m.images_per_s for m in self.history) if curve else 0.0,
            model=self.model,
            history=list(self.history),
        )


def evaluate_top1(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 500,
    resolution: int | None = None,
    memory_format: torch.memory_format = torch.channels_last,
    autocast: Callable[[], Any] = nullcontext,
    mean: Stats = CIFAR100_MEAN,
    std: Stats = CIFAR100_STD,
) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on uint8 ``images`` and int64 ``labels``.

    Images are normalised like training batches (no augmentation; ``mean``/``std`` the data
    set's) and resized to ``resolution`` if given; they are moved to the model's device batch
    by batch.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.inference_mode():
        for start in range(0, labels.numel(), batch_size):
            x = normalize(images[start : start + batch_size].to(device), resolution, mean, std)
            with autocast():
                logits = model(x.contiguous(memory_format=memory_format))
            y = labels[start : start + batch_size].to(device)
            correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return correct.item() / max(1, labels.numel())


def train_proxy(
    config: ReXNetConfig,
    split: Split,
    settings: TrainSettings,
    callback: Callable[[EpochMetrics], None] | None = None,
    progress: StepProgress | None = None,
) -> TrainResult:
    """Train ``config``'s proxy on ``split`` and report validation top-1 per epoch.

    The classifier has ``split.num_classes`` outputs and inputs are normalised with
    ``split.mean``/``split.std``.

    ``callback(metrics)`` runs after every epoch and ``progress(step, total)`` after every
    step; either may raise to stop training early (the exception propagates). Raises
    :class:`NonFiniteLossError` if the loss diverges.
    """
    trainer = Trainer(config, settings, split.train_y.numel(), split.num_classes, split.mean, split.std)
    return trainer.fit(split.train_x, split.train_y, split.val_x, split.val_y, callback, progress)


# ---------------------------------------------------------------------------- checkpoints
STATE_FORMAT = "rexsearch.train-state/1"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_checkpoint(trainer: Trainer, directory: Path) -> None:
    """Weights (safetensors) and optimizer state (a weights-only torch file) after ``trainer.epoch``.

    Both files carry the epoch in their name; ``checkpoint.json`` is rewritten last and
    names them, so an interruption at any point leaves the previous checkpoint valid.
    Older checkpoint files are removed afterwards. The weights carry the trained config
    and layout, so :func:`rexsearch.load_model` opens the folder or the file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights = f"checkpoint-epoch{trainer.epoch}.safetensors"
    state = f"checkpoint-epoch{trainer.epoch}.pt"
    save_state(trainer.model.state_dict(), trainer.config, directory / weights, epoch=str(trainer.epoch))
    payload = {
        "format": STATE_FORMAT,
        "epoch": trainer.epoch,
        "optimizer": trainer.optimizer.state_dict(),
        "history": [m.to_dict() for m in trainer.history],
    }
    atomic_write(directory / state, lambda tmp: torch.save(payload, tmp))
    write_json(directory / CHECKPOINT_JSON, {"epoch": trainer.epoch, "weights": weights, "state": state})
    for old in directory.glob("checkpoint-epoch*"):
        if old.name not in (weights, state):
            old.unlink(missing_ok=True)


def load_checkpoint(trainer: Trainer, directory: Path) -> bool:
    """Restore the last checkpoint in ``directory`` into ``trainer``; False when there is none.

    Loading runs no code: safetensors for weights, ``torch.load(weights_only=True)`` for state.
    """
    pointer = directory / CHECKPOINT_JSON
    if not pointer.is_file():
        return False
    import pickle

    def refuse(why: str) -> UserError:
        why = " ".join(why.split())
        why = why if len(why) <= 200 else why[:197] + "..."
        return UserError(
            f"cannot resume from the checkpoint in {directory} ({why}); remove {pointer} to start over"
        )

    try:
        info = loads_json(read_text_file(pointer, CHECKPOINT_JSON, 1 << 20), str(pointer))
        names = [info.get("weights"), info.get("state")] if isinstance(info, dict) else [None]
        if not all(isinstance(n, str) and n and Path(n).name == n and n not in (".", "..") for n in names):
            raise refuse(f"{CHECKPOINT_JSON} must name two files of this folder")
        tensors = load_file(str(directory / info["weights"]), device=str(trainer.device))
        try:
            state = torch.load(directory / info["state"], map_location=trainer.device, weights_only=True)
        except pickle.UnpicklingError:
            raise refuse(
                f"{info['state']} holds Python objects other than tensors, and rexsearch will not unpickle it"
            ) from None
        if (
            not isinstance(state, dict)
            or state.get("format") != STATE_FORMAT
            or state["epoch"] != info["epoch"]
        ):
            raise ValueError("the state file does not match checkpoint.json")
        trainer.model.load_state_dict(tensors)
        trainer.optimizer.load_state_dict(state["optimizer"])
    except UserError as exc:
        raise refuse(str(exc)) if not str(exc).startswith("cannot resume") else exc from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, SafetensorError, EOFError) as exc:
        raise refuse(f"{type(exc).__name__}: {exc}") from None
    trainer.epoch = int(state["epoch"])
    trainer.history = [EpochMetrics(**m) for m in state["history"]]
    return True


def measure_throughput(
    config: ReXNetConfig, batch_size: int, steps: int = 3, repeats: int = 5, num_classes: int = PROXY_CLASSES
) -> float:
    """Training images/s of ``config``'s proxy (``num_classes`` outputs) here: the median of
    ``repeats`` timings of ``steps`` plain SGD steps each, after one warm-up step (allocations,
    oneDNN kernel choice)."""
    model = build_model(proxy_config(config, num_classes=num_classes)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch_size, 3, PROXY_RESOLUTION, PROXY_RESOLUTION).to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def estimate_seconds(
    trials: int, epochs: int, train_images: int, val_images: int, images_per_s: float
) -> float:
    """Rough wall time of ``trials`` proxy trainings on ``train_images`` (evaluated on
    ``val_images``) at a measured training throughput; evaluation is counted at a third of a
    training image (a forward pass only)."""
    per_trial = epochs * (train_images + val_images / 3) / max(images_per_s, 1e-9)
    return per_trial * trials
