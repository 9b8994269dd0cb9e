"""What a run is asked to do (:class:`SearchSettings`), recorded in run.json, and starting a run."""

from __future__ import annotations

import math
import platform
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rexsearch import __version__
from rexsearch.confirmation import CONFIRM_SUFFIX
from rexsearch.errors import UserError
from rexsearch.files import os_error_message
from rexsearch.results import DEFAULT_OBJECTIVES, DEFAULT_RANK_PROTOCOL, OBJECTIVES, RANK_PROTOCOLS, SAMPLERS
from rexsearch.rundir import (
    LATENCY_TABLE,
    LOCK_FILE,
    RAY_DIR,
    RUN_JSON,
    RunInfo,
    RunLock,
    resolve_storage,
    sqlite_url,
    stored_storage,
    write_run_json,
)
from rexsearch.space import Budget, load_space
from rexsearch.storage import mask_passwords, mask_url, open_storage

#: The smallest budget resolution: the proxy's image size (CIFAR's), at which every proxy is trained.
MIN_RESOLUTION = 32


@dataclass(frozen=True)
class SearchSettings:
    """Everything a run needs; recorded in run.json (the contract of ``rexsearch run``)."""

    run_dir: str
    flops_budget: int | None
    params_budget: int | None = None
    resolution: int = 224
    space: str = "rexnet"
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    sampler: str = "tpe"
    trials: int = 64
    epochs: int = 30
    train_images: int | None = None
    #: None: the data set's own validation images (an image folder's val/), else a tenth of the
    #: training images (at most 5,000); see :func:`rexsearch.datasets.splits.search_split`
    val_images: int | None = 5000
    batch_size: int = 128
    seed: int = 0
    data_dir: str | None = None
    dataset: str = "cifar100"
    storage: str | None = None
    study_name: str = "rexsearch"
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 10
    storage_path: str | None = None
    trial_timeout: float | None = None
    time_budget: float | None = None  # seconds after which no further trial is launched
    trial_retries: int = 2
    keep_weights: bool = False
    rank_samples: int | None = None
    rank_protocol: str = DEFAULT_RANK_PROTOCOL
    asha_min_epochs: int = 4
    latency_budget_ms: float | None = None
    latency_table: str | None = None  # the table file as given; the run keeps a copy (LATENCY_TABLE)
    latency_margin: float = 0.0
    # --latency-margin measure: measured / predicted of the candidates timed for the margin
    latency_margin_ratios: tuple[float, ...] = ()
    channel_multiple: int | None = None

    def latency_table_path(self) -> Path | None:
        """The run's copy of its latency table once the run exists, else the file given."""
        if self.latency_table is None:
            return None
        copy = Path(self.run_dir) / LATENCY_TABLE
        return copy if copy.is_file() else Path(self.latency_table)

    @cached_property
    def budget(self) -> Budget:
        table = None
        path = self.latency_table_path()
        if self.latency_budget_ms is not None and path is not None:
            from rexsearch.latency import load_table

            table = load_table(path)
        return Budget.from_settings(self.to_dict(), table)

    @property
    def needs_data(self) -> bool:
        return "accuracy" in self.objectives

    @property
    def proxy_classes(self) -> int | None:
        """The proxy's classifier width when the data set fixes it (None: an image folder's,
        known once it is loaded)."""
        from rexsearch.datasets import dataset_info

        return dataset_info(self.dataset).classes

    def storage_url(self) -> str:
        return self.storage or sqlite_url(self.run_dir)

    def validate(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if not bad and len(set(self.objectives)) != len(self.objectives):
            raise UserError(f"--objectives names an objective twice: {','.join(self.objectives)!r}")
        if tuple(self.objectives) == ("latency",):
            raise UserError(
                "--objectives latency alone would only find the fastest network; pair it with accuracy "
                "or rank (e.g. --objectives accuracy,latency)"
            )
        if bad or not self.objectives:
            raise UserError(
                f"--objectives must be a comma-separated subset of {', '.join(OBJECTIVES)}, "
                f"got {','.join(self.objectives)!r}"
            )
        if self.rank_protocol not in RANK_PROTOCOLS:
            raise UserError(
                f"--rank-protocol must be one of {', '.join(RANK_PROTOCOLS)}, got {self.rank_protocol!r}"
            )
        name = self.study_name
        if not name or name != name.strip() or len(name) > 200 or not name.isprintable():
            raise UserError(
                f"--study-name must be a non-empty printable name of at most 200 characters without "
                f"leading or trailing spaces, got {name[:60]!r}"
            )
        if name.endswith(CONFIRM_SUFFIX):
            raise UserError(
                f"--study-name must not end with {CONFIRM_SUFFIX!r}: that names the confirmation study "
                f"of the run {name[: -len(CONFIRM_SUFFIX)]!r}; choose another name"
            )
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        for name in ("trials", "epochs", "batch_size", "resolution"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer")
        if self.val_images is not None and self.val_images < 1:
            raise UserError("--val-images must be a positive integer")
        self._validate_dataset()
        if self.train_images is not None and self.train_images < 1:
            raise UserError("--train-images must be a positive integer")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--seed must be an integer in [0, 2^32), got {self.seed}")
        if self.resolution < MIN_RESOLUTION:
            raise UserError(
                f"--resolution must be at least {MIN_RESOLUTION} (the proxy's image size, at which every "
                f"proxy is trained), got {self.resolution}"
            )
        if self.batch_size < 2:
            raise UserError(
                f"--batch-size must be at least 2 (BatchNorm needs two images), got {self.batch_size}"
            )
        if self.needs_data:
            from rexsearch.datasets import dataset_info

            info = dataset_info(self.dataset)
            known = info.train_images is not None and self.val_images is not None
            if known and self.val_images >= info.train_images:  # type: ignore[operator]
                raise UserError(
                    f"--val-images must be below {info.title}'s {info.train_images:,} training images, "
                    f"got {self.val_images:,}"
                )
            split = self.train_split_images
            if split is not None and self.batch_size > split:
                raise UserError(
                    f"--batch-size {self.batch_size:,} is larger than the training split "
                    f"({split:,} images); give at most {split:,}"
                )
            self._check_trainable()
        if self.cpus_per_trial is not None and self.cpus_per_trial <= 0:
            raise UserError(f"--cpus-per-trial must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial must not be negative, got {self.gpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UserError(f"--max-concurrent must be a positive integer, got {self.max_concurrent}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise UserError(f"--time-budget must be a positive duration, got {self.time_budget}")
        if self.trial_timeout is not None and not self.trial_timeout > 0:
            raise UserError(f"--trial-timeout must be a positive number of seconds, got {self.trial_timeout}")
        if self.trial_retries < 0:
            raise UserError(f"--trial-retries must not be negative, got {self.trial_retries}")
        if "latency" in self.objectives and self.latency_budget_ms is None:
            raise UserError(
                "--objectives latency needs a latency budget: --latency-budget T --latency-table FILE"
            )

    def _check_trainable(self) -> None:
        """Refuse a fidelity that every trial's training would refuse (the trainer's own limits)."""
        from rexsearch.train import TrainSettings

        try:
            TrainSettings(epochs=self.epochs, batch_size=self.batch_size, seed=self.seed)
        except UserError as exc:
            name, _, rest = str(exc).partition(" ")
            raise UserError(
                f"--{name.replace('_', '-')} {rest}: every trial's training would refuse it"
            ) from None

    def _validate_dataset(self) -> None:
        from rexsearch.datasets import check_data_dir, dataset_info

        dataset_info(self.dataset)  # an unknown name is refused, naming the choices
        if self.needs_data:
            check_data_dir(self.data_dir)
        if self.dataset != "folder":
            return
        if not self.data_dir:
            raise UserError("--dataset folder needs --data-dir PATH: a folder with one sub-folder per class")
        if not self.needs_data:
            raise UserError(
                "--dataset folder needs the accuracy objective (a rank-only run trains nothing on it); "
                "add accuracy to --objectives or leave --dataset out"
            )

    @property
    def train_split_images(self) -> int | None:
        """Training images of the search split: ``--train-images`` or all but the held-out ones
        (None for an image folder, whose size is known once it is loaded)."""
        from rexsearch.datasets import dataset_info

        total = dataset_info(self.dataset).train_images
        if total is None:
            return None
        available = total - (5000 if self.val_images is None else self.val_images)
        return min(self.train_images, available) if self.train_images else available

    def ray_storage_path(self) -> str:
        """Where Ray Tune keeps the experiment: ``--storage-path`` or RUN_DIR/ray (one node only)."""
        return self.storage_path or str(Path(self.run_dir).resolve() / RAY_DIR)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objectives"] = list(self.objectives)
        data["latency_margin_ratios"] = list(self.latency_margin_ratios)
        return data


def _versions() -> dict[str, str]:
    import optuna
    import ray
    import torch

    return {
        "rexsearch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "ray": ray.__version__,
    }


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a ``--run-dir`` that is a file, holds a run, or holds anything but a run lock."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file; give a directory (new or empty)")
    if (run_dir / RUN_JSON).exists():
        raise UserError(
            f"{run_dir} already holds a run; continue it with `rexsearch resume {run_dir}` "
            "or choose another --run-dir"
        )
    if run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise UserError(f"{run_dir} exists and is not empty; choose another --run-dir")


def begin_run(settings: SearchSettings, argv: list[str], data: dict[str, Any] | None = None) -> RunLock:
    """Validate a new run, create its directory, take its lock, then write run.json; the caller
    holds the returned lock for the run and releases it.

    ``data`` is the data set the run trains on (:attr:`rexsearch.datasets.splits.Split.dataset`:
    its identity and the search split's sizes), recorded as run.json's ``data``; without it an
    accuracy run records the data set's name only.

    Everything that can refuse the run is checked before the directory is made; the directory is
    checked again once the lock is held, so of two drivers started on the same new ``--run-dir``
    the second is refused before it writes anything.
    """
    run_dir = Path(settings.run_dir)
    check_new_run_dir(run_dir)
    if settings.storage:  # a shared database may already hold a study of that name
        names = {s.study_name for s in open_storage(settings.storage).get_all_studies()}
        if settings.study_name in names:
            raise UserError(
                f"the study {settings.study_name!r} already exists in {mask_url(settings.storage)}; "
                "choose another --study-name for a new run, or continue that run with rexsearch resume"
            )
    space = load_space(settings.space)
    recorded = {
        **settings.to_dict(),
        "storage": settings.storage and stored_storage(settings.storage, run_dir),
    }
    if recorded["storage"]:  # a --storage in another run's folder would bypass that run's lock
        resolve_storage(recorded["storage"], run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(os_error_message(exc, run_dir, "create the run directory")) from None
    lock = RunLock.acquire(run_dir)
    try:
        check_new_run_dir(run_dir)
        _write_run(run_dir, settings, space, [mask_passwords(str(a)) for a in argv], recorded, data)
    except OSError as exc:
        lock.release()
        raise UserError(os_error_message(exc, run_dir, "create the run directory")) from None
    except BaseException:
        lock.release()
        raise
    return lock


def start_run(settings: SearchSettings, argv: list[str], data: dict[str, Any] | None = None) -> Path:
    """:func:`begin_run` for a caller that takes the run's lock later (or not at all)."""
    begin_run(settings, argv, data).release()
    return Path(settings.run_dir)


def _write_run(
    run_dir: Path,
    settings: SearchSettings,
    space: Any,
    argv: list[str],
    recorded: dict,
    data: dict[str, Any] | None,
) -> None:
    from rexsearch.datasets import dataset_info

    if settings.needs_data and data is None:
        data = {"dataset": settings.dataset, "title": dataset_info(settings.dataset).title}
    budget = settings.budget
    latency: dict[str, Any] = {}
    if budget.latency_table is not None:
        budget.latency_table.save(run_dir / LATENCY_TABLE)
        latency = {
            "latency_table": {
                "path": str(Path(settings.latency_table or "").resolve()),
                "copy": LATENCY_TABLE,
                "environment": budget.latency_table.environment.to_dict(),
            },
        }
    write_run_json(
        run_dir,
        {
            "command": argv,
            "versions": _versions(),
            "space": {"name": space.name, "path": space.path, "definition": space.to_dict()},
            **({"data": data} if settings.needs_data else {}),
            **latency,
            "settings": recorded,
        },
    )


def settings_from_run(run: RunInfo, **overrides: Any) -> SearchSettings:
    """The settings a run was started with (run.json), with ``overrides`` applied."""
    if "space" not in run.settings:  # a run.json/1 written before settings were recorded
        raise UserError(f"{run.path / 'run.json'} has no 'settings' object; this run cannot be resumed")
    data = dict(run.settings)
    fields = SearchSettings.__dataclass_fields__
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"{run.path / 'run.json'} has settings this rexsearch does not know ({', '.join(unknown)}); "
            "resume it with the rexsearch version that started it"
        )
    data["objectives"] = tuple(data.get("objectives") or ())
    data["latency_margin_ratios"] = tuple(data.get("latency_margin_ratios") or ())
    data["run_dir"] = str(run.path)
    if data.get("storage") is not None:  # a relative SQLite path lies in the run directory
        data["storage"] = resolve_storage(data["storage"], run.path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = SearchSettings(**data)
        settings.validate()
    except TypeError as exc:
        raise UserError(
            f"{run.path / 'run.json'} has malformed settings ({exc}); it cannot be resumed"
        ) from None
    return settings
