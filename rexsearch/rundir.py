"""The run directory contract (design.md): run.json, the Optuna study, weights, outputs.

``run.json`` (format ``rexsearch.run/1``) records the command, versions, seed, budget,
space, objectives, fidelity, and where the study is stored. Everything that reads a run
afterwards (report, export, dashboard, resume) opens it through :func:`load_run`, and every
path inside a run directory comes from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rexsearch.errors import UserError
from rexsearch.files import write_text_atomic

RUN_FORMAT = "rexsearch.run/1"
RUN_JSON = "run.json"
STUDY_DB = "study.db"
WEIGHTS_DIR = "weights"
RAY_DIR = "ray"
TRAIN_DIR = "train"
TRIALS_CSV = "trials.csv"
REPORT_HTML = "report.html"
PARETO_PNG = "pareto.png"
#: The run's copy of its latency table (runs with a latency budget): resume and reports read it.
LATENCY_TABLE = "latency-table.json"


def weights_path(run_dir: str | Path, trial_number: int) -> Path:
    """Where trial ``trial_number``'s proxy weights are kept (only with ``run --keep-weights``)."""
    return Path(run_dir) / WEIGHTS_DIR / f"trial-{trial_number}.safetensors"


def sqlite_url(run_dir: str | Path) -> str:
    """The default storage of a run: SQLite ``RUN_DIR/study.db``."""
    return f"sqlite:///{(Path(run_dir).resolve() / STUDY_DB).as_posix()}"


@dataclass(frozen=True)
class RunInfo:
    """What run.json says about a run."""

    path: Path
    data: dict[str, Any]

    @property
    def storage_url(self) -> str:
        return self.data["storage"]

    @property
    def study_name(self) -> str:
        return self.data["study_name"]

    @property
    def objectives(self) -> list[str]:
        return list(self.data["objectives"])

    @property
    def flops_budget(self) -> int | None:
        value = self.data["budget"].get("flops")
        return None if value is None else int(value)

    @property
    def latency_budget_ms(self) -> float | None:
        value = self.data["budget"].get("latency_ms")
        return None if value is None else float(value)

    @property
    def latency_environment(self) -> dict[str, Any] | None:
        """Where the run's latency table was measured (run.json), or None without a latency budget."""
        table = self.data["budget"].get("latency_table")
        return table.get("environment") if isinstance(table, dict) else None

    def describe_budget(self) -> str:
        """The budget in words: ``300,000,000 MACs, 4,000,000 parameters, 12 ms latency``."""
        b = self.data["budget"]
        parts = []
        if self.flops_budget is not None:
            parts.append(f"{self.flops_budget:,} MACs")
        if self.params_budget is not None:
            parts.append(f"{self.params_budget:,} parameters")
        if self.latency_budget_ms is not None:
            margin = b.get("latency_margin") or 0.0
            solved = f" (solved {margin:.0%} under it)" if margin else ""
            parts.append(f"{self.latency_budget_ms:g} ms latency{solved}")
        if b.get("channel_multiple"):
            parts.append(f"widths multiples of {b['channel_multiple']}")
        return ", ".join(parts)

    @property
    def params_budget(self) -> int | None:
        value = self.data["budget"].get("params")
        return None if value is None else int(value)

    @property
    def resolution(self) -> int:
        return int(self.data["budget"]["resolution"])

    @cached_property
    def budget(self):
        """The run's :class:`~rexsearch.space.Budget` (MACs, parameters, resolution; the latency
        budget with the run's copy of its table)."""
        from rexsearch.space import Budget

        b = self.data["budget"]
        table = None
        if self.latency_budget_ms is not None:
            from rexsearch.latency import load_table

            table = load_table(self.path / LATENCY_TABLE)
        return Budget(
            self.flops_budget,
            self.params_budget,
            self.resolution,
            self.latency_budget_ms,
            table,
            float(b.get("latency_margin") or 0.0),
            b.get("channel_multiple"),
        )

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
        """The run's Optuna storage, connected (see :func:`rexsearch.storage.open_storage`)."""
        from rexsearch.storage import open_storage

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
    """Read RUN_DIR/run.json; a missing or malformed run is a UserError naming the path."""
    path = Path(run_dir)
    meta = path / RUN_JSON
    if not path.is_dir():
        raise UserError(f"no run directory at {path}")
    if not meta.is_file():
        raise UserError(f"{path} is not a rexsearch run directory: {RUN_JSON} is missing")
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {meta}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise UserError(f"{meta} is not a {RUN_FORMAT} file")
    for key in ("storage", "study_name", "objectives", "budget"):
        if key not in data:
            raise UserError(f"{meta} lacks the key {key!r}")
    return RunInfo(path.resolve(), data)


def write_run_json(run_dir: Path, data: dict[str, Any]) -> None:
    """Write run.json atomically (temporary file, then rename)."""
    data = {"format": RUN_FORMAT, **data}
    write_text_atomic(Path(run_dir) / RUN_JSON, json.dumps(data, indent=2) + "\n")
