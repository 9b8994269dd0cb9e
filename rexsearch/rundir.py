"""The run directory contract (docs/architecture.md): run.json, the Optuna study, weights, outputs.

``run.json`` (format ``rexsearch.run/2``) records the command, versions, the space, the data
set and, once, the settings the run was started with (``settings``: seed, budget, objectives,
fidelity, storage, ...). Files of the earlier format ``rexsearch.run/1``, which also repeated
part of the settings at the top level, are read through the same record (:func:`load_run`
upgrades them in memory). Everything that reads a run afterwards (report, export, dashboard,
resume) opens it through :func:`load_run`, and every path inside a run directory comes from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rexsearch.errors import UserError
from rexsearch.files import loads_json, read_text_file, write_text_atomic

RUN_FORMAT = "rexsearch.run/2"
#: The earlier format: the settings record plus top-level copies of the budget, seed, objectives,
#: fidelity, storage, study name, sampler and trials (still read, never written).
RUN_FORMAT_V1 = "rexsearch.run/1"
#: The fidelity settings (run.json/1's ``fidelity``), in their order.
FIDELITY_KEYS = ("epochs", "train_images", "batch_size", "val_images")
RUN_JSON = "run.json"
STUDY_DB = "study.db"
WEIGHTS_DIR = "weights"
RAY_DIR = "ray"
TRAIN_DIR = "train"
TRIALS_CSV = "trials.csv"
REPORT_HTML = "report.html"
PARETO_PNG = "pareto.png"
LOCK_FILE = "driver.lock"
#: run.json is a few kilobytes (its latency calibration a few hundred); anything far larger is not one.
MAX_RUN_JSON_BYTES = 16 * 2**20
#: The run's copy of its latency table (runs with a latency budget): resume and reports read it.
LATENCY_TABLE = "latency-table.json"


def weights_path(run_dir: str | Path, trial_number: int) -> Path:
    """Where trial ``trial_number``'s proxy weights are kept (only with ``run --keep-weights``)."""
    return Path(run_dir) / WEIGHTS_DIR / f"trial-{trial_number}.safetensors"


#: run.json's storage for the default SQLite study: relative, resolved against the run directory,
#: so a copied or moved run directory reads its own study.
RUN_SQLITE = f"sqlite:///{STUDY_DB}"


def sqlite_url(run_dir: str | Path) -> str:
    """The default storage of a run: SQLite ``RUN_DIR/study.db`` (absolute)."""
    return f"sqlite:///{(Path(run_dir).resolve() / STUDY_DB).as_posix()}"


def sqlite_path(url: str) -> str | None:
    """The file path of a SQLite URL (as written, maybe relative), or None (not SQLite, in memory)."""
    if not url.strip().lower().startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # malformed: the storage opener explains it
        return None
    return database if database and database != ":memory:" else None


def resolve_storage(url: str, run_dir: str | Path) -> str:
    """A run.json storage URL made usable: a relative SQLite path is taken inside ``run_dir``.

    What run.json says cannot reach into another run: a relative path that leaves ``run_dir``
    (``..``), or any SQLite file in another run's directory, is refused (:class:`UserError`),
    since writing there would bypass that run's lock.
    """
    path = sqlite_path(url)
    if path is None:
        return url
    home = Path(run_dir).resolve()
    if Path(path).is_absolute():
        target = Path(path).resolve()
    else:
        target = (home / path).resolve()
        if not target.is_relative_to(home):
            raise UserError(
                f"the run.json of {run_dir} names the SQLite storage {path!r}, which leaves the run "
                "directory; a relative storage path must stay inside it"
            )
    folder = target.parent
    if folder != home and (folder / RUN_JSON).is_file():
        raise UserError(
            f"the SQLite storage {target} of the run {run_dir} belongs to the run {folder}; a run "
            "cannot use another run's study (choose another --storage)"
        )
    return url if Path(path).is_absolute() else f"sqlite:///{target.as_posix()}"


def stored_storage(url: str | None, run_dir: str | Path) -> str:
    """What run.json records as the storage: :data:`RUN_SQLITE` for the default, other SQLite
    paths made absolute, and never a password (see :func:`rexsearch.storage.strip_password`)."""
    from rexsearch.storage import strip_password

    if url is None:
        return RUN_SQLITE
    path = sqlite_path(url)
    if path is not None and not Path(path).is_absolute():
        return f"sqlite:///{Path(path).resolve().as_posix()}"
    return strip_password(url)


SQLITE_HEADER = b"SQLite format 3\x00"


def _is_sqlite_file(path: Path) -> bool:
    """Whether ``path`` starts with SQLite's header: opening anything else would write a fresh
    schema into it (a 0-byte file) or fail deep inside SQLAlchemy."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


@dataclass(frozen=True)
class RunInfo:
    """What run.json says about a run."""

    path: Path
    data: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the run was started with (run.json's ``settings``, the one record of them)."""
        return self.data["settings"]

    @property
    def storage_url(self) -> str:
        """The study's storage; a relative SQLite path (the default) lies in the run directory."""
        return resolve_storage(self.settings.get("storage") or RUN_SQLITE, self.path)

    @property
    def study_name(self) -> str:
        return self.settings["study_name"]

    @property
    def objectives(self) -> list[str]:
        return list(self.settings["objectives"])

    @property
    def seed(self) -> int:
        return int(self.settings.get("seed") or 0)

    @property
    def sampler(self) -> str | None:
        return self.settings.get("sampler")

    @property
    def fidelity(self) -> dict[str, Any]:
        """Epochs, training and validation images and batch size, as the run was given them."""
        return {k: self.settings[k] for k in FIDELITY_KEYS if k in self.settings}

    @property
    def flops_budget(self) -> int | None:
        value = self.settings.get("flops_budget")
        return None if value is None else int(value)

    @property
    def latency_budget_ms(self) -> float | None:
        value = self.settings.get("latency_budget_ms")
        return None if value is None else float(value)

    @property
    def dataset(self) -> dict[str, Any] | None:
        """The data set the run trained on (run.json's ``data``, see
        :func:`rexsearch.datasets.recorded_dataset`); None for a rank-only run. A run recorded
        before data sets were a choice trained on CIFAR-100."""
        from rexsearch.datasets import recorded_dataset

        record = recorded_dataset(self.data.get("data"))
        if record is None and "accuracy" in self.objectives:
            return {"dataset": "cifar100", "title": "CIFAR-100"}
        return record

    @property
    def dataset_title(self) -> str | None:
        """The data set's name for people (``Fashion-MNIST``), or None for a rank-only run."""
        from rexsearch.datasets import title_of

        return title_of(self.dataset) if self.dataset else None

    @property
    def stand_in_data(self) -> str | None:
        """A sentence when the run trained on files other than its data set's official ones
        (admitted by a checksum override, run.json's ``data``), else None."""
        data = self.dataset
        if not data or data.get("official", True):
            return None
        title = self.dataset_title
        md5 = data.get("archive_md5") or data.get("digest")
        env = {
            "cifar100": "REXSEARCH_CIFAR100_MD5",
            "cifar10": "REXSEARCH_CIFAR10_MD5",
            "fashion-mnist": "REXSEARCH_FASHION_MNIST_MD5",
        }.get(str(data.get("dataset")), "a checksum override")
        what = "an archive" if "archive_md5" in data else "files"
        return (
            f"This run trained on {what} other than {title}'s original (md5 {md5}, admitted by {env}): "
            f"unless it is a re-packed {title}, this is a stand-in data set and its accuracies are not "
            f"{title}'s."
        )

    @property
    def latency_environment(self) -> dict[str, Any] | None:
        """Where the run's latency table was measured (run.json), or None without a latency budget."""
        table = self.data.get("latency_table")
        return table.get("environment") if isinstance(table, dict) else None

    def describe_budget(self) -> str:
        """The budget in words: ``300,000,000 MACs, 4,000,000 parameters, 12 ms latency``."""
        parts = []
        if self.flops_budget is not None:
            parts.append(f"{self.flops_budget:,} MACs")
        if self.params_budget is not None:
            parts.append(f"{self.params_budget:,} parameters")
        if self.latency_budget_ms is not None:
            margin = self.settings.get("latency_margin") or 0.0
            solved = f" (solved {margin:.0%} under it)" if margin else ""
            parts.append(f"{self.latency_budget_ms:g} ms latency{solved}")
        if self.settings.get("channel_multiple"):
            parts.append(f"widths multiples of {self.settings['channel_multiple']}")
        return ", ".join(parts)

    @property
    def params_budget(self) -> int | None:
        value = self.settings.get("params_budget")
        return None if value is None else int(value)

    @property
    def resolution(self) -> int:
        return int(self.settings["resolution"])

    @cached_property
    def budget(self):
        """The run's :class:`~rexsearch.space.Budget` (MACs, parameters, resolution; the latency
        budget with the run's copy of its table)."""
        from rexsearch.space import Budget

        table = None
        if self.latency_budget_ms is not None:
            from rexsearch.latency import load_table

            table = load_table(self.path / LATENCY_TABLE)
        return Budget.from_settings(self.settings, table)

    def weights_path(self, trial_number: int) -> Path:
        """Where a trial's proxy weights are kept (only with ``run --keep-weights``)."""
        return weights_path(self.path, trial_number)

    def train_dir(self, trial_number: int, seed: int) -> Path:
        """Where ``rexsearch train RUN_DIR --trial N`` writes by default."""
        return self.path / TRAIN_DIR / f"trial-{trial_number}-s{seed}"

    def file(self, name: str) -> Path:
        """A file of the run directory (``TRIALS_CSV``, ``REPORT_HTML``, ``PARETO_PNG``, ...)."""
        return self.path / name

    def open_storage(self):
        """The run's Optuna storage, connected (see :func:`rexsearch.storage.open_storage`).

        A SQLite file that is missing is refused rather than created, so reading a run
        (report, dashboard, export, resume) never leaves an empty study behind.
        """
        from rexsearch.storage import open_storage

        path = sqlite_path(self.storage_url)
        if path is not None and not Path(path).is_file():
            raise UserError(
                f"the study database {path} of the run {self.path} is missing; is {self.path} a complete "
                "run (was study.db deleted or left behind when the folder was copied)?"
            )
        if path is not None and not _is_sqlite_file(Path(path)):
            raise UserError(
                f"the study database {path} of the run {self.path} is not a SQLite database (empty or "
                "damaged); restore it from a copy of the run"
            )
        return open_storage(self.storage_url)

    def open_study(self, storage=None):
        """The run's Optuna study (loaded, not created), from ``storage`` or the run's own."""
        import optuna

        from rexsearch.storage import mask_url

        try:
            return optuna.load_study(study_name=self.study_name, storage=storage or self.open_storage())
        except KeyError:
            raise UserError(
                f"the study {self.study_name!r} is not in {mask_url(self.storage_url)}; is {self.path} a "
                "complete run?"
            ) from None


def load_run(run_dir: str | Path) -> RunInfo:
    """Read RUN_DIR/run.json; a missing or malformed run is a UserError naming the path.

    A run.json of the earlier format (``rexsearch.run/1``) is checked as that format and then
    read as the current one (:func:`upgrade_v1`); the file itself is left as it is.
    """
    path = Path(run_dir)
    meta = path / RUN_JSON
    if not path.is_dir():
        raise UserError(f"no run directory at {path}")
    if not meta.is_file():
        raise UserError(f"{path} is not a rexsearch run directory: {RUN_JSON} is missing")
    data = loads_json(read_text_file(meta, RUN_JSON, MAX_RUN_JSON_BYTES), str(meta))
    version = data.get("format") if isinstance(data, dict) else None
    if version == RUN_FORMAT_V1:
        _check_v1(meta, data)
        data = upgrade_v1(data)
    elif version != RUN_FORMAT:
        raise UserError(f"{meta} is not a {RUN_FORMAT} file")
    _check_run(meta, data)
    return RunInfo(path.resolve(), data)


#: run.json/1's ``budget`` keys and the settings they copied.
V1_BUDGET_KEYS = {
    "flops": "flops_budget",
    "params": "params_budget",
    "resolution": "resolution",
    "latency_ms": "latency_budget_ms",
    "latency_margin": "latency_margin",
    "channel_multiple": "channel_multiple",
}


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A run.json/1 record as the current format: one ``settings`` record.

    The file's own ``settings`` win; a key it lacks (files written before settings were
    recorded) is taken from the top-level copy, as those readers took it. The latency table's
    record (``budget.latency_table``) moves to the top level.
    """
    data = dict(data)
    settings = dict(data.get("settings") or {})
    budget = data.pop("budget")
    for old, new in V1_BUDGET_KEYS.items():
        if old in budget:
            settings.setdefault(new, budget[old])
    if isinstance(budget.get("latency_table"), dict):
        data.setdefault("latency_table", budget["latency_table"])
    for key in ("seed", "objectives", "study_name", "sampler", "trials", "storage"):
        if key in data:
            settings.setdefault(key, data.pop(key))
    for key, value in (data.pop("fidelity", None) or {}).items():
        settings.setdefault(key, value)
    data["settings"] = settings
    data["format"] = RUN_FORMAT
    return data


def _damaged(meta: Path, key: str, what: str) -> UserError:
    return UserError(f"{meta} is damaged: {key!r} must be {what}; restore run.json from a backup")


def _check_v1(meta: Path, data: dict[str, Any]) -> None:
    """What run.json/1 must hold for :func:`upgrade_v1`: its top-level keys, named as that format
    named them."""
    for key in ("storage", "study_name", "objectives", "budget"):
        if key not in data:
            raise UserError(f"{meta} lacks the key {key!r}")
    if not isinstance(data["storage"], str) or not data["storage"]:
        raise _damaged(meta, "storage", "a storage URL")
    budget = data["budget"]
    if not isinstance(budget, dict):
        raise _damaged(meta, "budget", "an object with flops, params and resolution")
    latency_only = budget.get("latency_ms") is not None  # a latency budget may stand alone
    for key, optional in (("flops", latency_only), ("params", True), ("resolution", False)):
        value = budget.get(key)
        if not (value is None and optional) and not _positive_int(value):
            raise _damaged(meta, f"budget.{key}", "a positive integer")
    for key in ("settings", "fidelity"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _damaged(meta, key, "an object")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_run(meta: Path, data: dict[str, Any]) -> None:
    """The keys every reader relies on, with their types: one sentence naming the first bad one."""
    settings = data.get("settings")
    if not isinstance(settings, dict):
        raise (
            UserError(f"{meta} lacks the key 'settings'")
            if settings is None
            else _damaged(meta, "settings", "an object")
        )
    name = "settings."
    for key in ("study_name", "objectives"):
        if key not in settings:
            raise UserError(f"{meta} lacks the key {name + key!r}")
    storage = settings.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage):
        raise _damaged(meta, name + "storage", "a storage URL")
    if not isinstance(settings["study_name"], str) or not settings["study_name"]:
        raise _damaged(meta, name + "study_name", "a study name")
    from rexsearch.results import OBJECTIVES, RANK_PROTOCOLS, SAMPLERS

    objectives = settings["objectives"]
    if (
        not isinstance(objectives, list)
        or not objectives
        or not all(isinstance(o, str) and o in OBJECTIVES for o in objectives)
        or len(set(objectives)) != len(objectives)
    ):
        raise _damaged(meta, name + "objectives", f"a list of distinct names from {', '.join(OBJECTIVES)}")
    for key, choices in (("sampler", SAMPLERS), ("rank_protocol", tuple(RANK_PROTOCOLS))):
        if settings.get(key) is not None and settings[key] not in choices:
            raise _damaged(meta, name + key, f"one of {', '.join(choices)}")
    latency = settings.get("latency_budget_ms")
    if latency is not None and (
        isinstance(latency, bool) or not isinstance(latency, int | float) or not 0 < latency < 1e9
    ):
        raise _damaged(meta, name + "latency_budget_ms", "a positive number of milliseconds")
    latency_only = settings.get("latency_budget_ms") is not None  # a latency budget may stand alone
    for key, optional in (("flops_budget", latency_only), ("params_budget", True), ("resolution", False)):
        value = settings.get(key)
        if not (value is None and optional) and not _positive_int(value):
            raise _damaged(meta, name + key, "a positive integer")
    for key in FIDELITY_KEYS:
        value = settings.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _damaged(meta, name + key, "a non-negative integer")
    seed = settings.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise _damaged(meta, name + "seed", "an integer in [0, 2^32)")
    # the optional keys readers use: each of its kind when present
    optional = {
        "versions": (dict, "an object"),
        "data": (dict, "an object"),
        "space": (dict, "an object"),
        "latency_table": (dict, "an object"),
        "command": (list, "a list of the command's words"),
    }
    for key, (kind, what) in optional.items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise _damaged(meta, key, what)


def write_run_json(run_dir: Path, data: dict[str, Any]) -> None:
    """Write run.json atomically (temporary file, then rename)."""
    data = {"format": RUN_FORMAT, **data}
    write_text_atomic(Path(run_dir) / RUN_JSON, json.dumps(data, indent=2) + "\n")


class RunLock:
    """One driver per run: an exclusive lock on ``RUN_DIR/driver.lock`` holding its pid and host.

    The lock is the kernel's (``flock``), so a driver that dies, even by SIGKILL, releases it
    with its last file descriptor and never leaves it stuck; the pid and host written into the
    file only name the holder in the refusal. The file descriptor is not inherited by the
    processes a driver starts (Ray's), so they cannot keep a dead driver's lock. With a
    PostgreSQL storage the lock still lives in the run directory: two drivers of one run
    must use the same run directory (which is where run.json is read from).
    """

    def __init__(self, run_dir: str | Path, fd: int) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunLock:
        """Take the lock or raise :class:`UserError` naming the driver that holds it."""
        import fcntl
        import os
        import socket

        from rexsearch.files import os_error_message

        path = Path(run_dir) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise UserError(os_error_message(exc, path, "lock the run")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"process {info['pid']} on {info['host']} (since {info['since']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise UserError(
                f"the run {Path(run_dir)} is in use by {who}; wait for it to finish or stop it "
                "(Ctrl-C), then resume"
            ) from None
        record = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}, separators=(", ", ": ")
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (record + "\n").encode(), 0)
        return cls(run_dir, fd)

    def release(self) -> None:
        """Give the lock up (also done by the kernel when the process ends)."""
        import os

        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S")
