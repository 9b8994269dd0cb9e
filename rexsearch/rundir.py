"""The run directory contract (design.md): run.json, the Optuna study, weights.

``run.json`` (format ``rexsearch.run/1``) records the command, versions, seed, budget,
space, objectives, fidelity, and where the study is stored. Everything that reads a run
afterwards (report, export, dashboard, resume) opens it through :func:`load_run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rexsearch.errors import UserError

RUN_FORMAT = "rexsearch.run/1"
RUN_JSON = "run.json"
STUDY_DB = "study.db"
WEIGHTS_DIR = "weights"


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
    def flops_budget(self) -> int:
        return int(self.data["budget"]["flops"])

    @property
    def params_budget(self) -> int | None:
        value = self.data["budget"].get("params")
        return None if value is None else int(value)

    @property
    def resolution(self) -> int:
        return int(self.data["budget"]["resolution"])

    def weights_path(self, trial_number: int) -> Path:
        """Where a trial's proxy weights are kept (only with ``run --keep-weights``)."""
        return self.path / WEIGHTS_DIR / f"trial-{trial_number}.safetensors"

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
    tmp = run_dir / (RUN_JSON + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(run_dir / RUN_JSON)
