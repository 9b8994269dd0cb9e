"""The Optuna side of a run: sampler, study, baselines, the define-by-run decoder, outcomes.

Every trial's record is written here, through :mod:`rexsearch.results` (the candidate's
record when it is decoded, the measurements and state when it ends), and every state change
goes through Optuna's own API (``study.tell``), so the sampler's ``after_trial`` runs for
failed and interrupted trials too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from rexsearch.config import ReXNetConfig
from rexsearch.errors import UserError
from rexsearch.results import (
    CONSTRAINTS_ATTR,
    INTERRUPTED_ERROR,
    candidate_record,
    constraint_values,
    directions,
    error_text,
    result_record,
)
from rexsearch.rundir import RunInfo
from rexsearch.search.settings import SearchSettings
from rexsearch.space import Budget, InfeasibleError, Space, baseline_candidate, baseline_configs
from rexsearch.storage import mask_url

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def make_sampler(name: str, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for ``--sampler`` (seeded)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, 4 * n_objectives)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def session_seed(seed: int, trials_in_study: int) -> int:
    """The sampler's seed for a session that starts with ``trials_in_study`` trials in the study.

    A new run uses ``seed`` itself; a resumed one derives a new seed from (seed, trials so
    far), so its sampler does not replay the proposals of the first session (a seeded sampler
    restarts its random sequence) while the whole run stays reproducible.
    """
    if trials_in_study == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, trials_in_study]).generate_state(1)[0])


def open_study(settings: SearchSettings, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create or load the study, with metric names and the budget recorded on it."""
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        directions=directions(settings.objectives),
        load_if_exists=True,
    )
    if list(study.metric_names or []) != list(settings.objectives):
        if len(study.directions) != len(settings.objectives):
            raise UserError(
                f"the study {settings.study_name!r} in {mask_url(settings.storage_url())} has "
                f"{len(study.directions)} "
                f"objectives, this run asks for {len(settings.objectives)}; use another --study-name"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(settings.objectives))
    study.set_user_attr("resolution", settings.resolution)
    study.set_user_attr("flops_budget", settings.flops_budget)
    study.set_user_attr("params_budget", settings.params_budget)
    if settings.latency_budget_ms is not None:
        study.set_user_attr("latency_budget_ms", settings.latency_budget_ms)
    return study


# ---------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class TrialDecoder:
    """Optuna define-by-run space: draws the variables, solves the width, writes the record.

    A class instance (not a closure) so that Ray Tune can pickle the searcher's state.
    Baselines are enqueued trials carrying a ``baseline`` user attribute and no params.
    """

    space: Space
    budget: Budget
    #: The proxy's classifier width (the data set's classes), recorded with each candidate.
    num_classes: int = 100

    def __call__(self, trial: Any) -> dict[str, Any]:
        baseline = trial.user_attrs.get("baseline")
        if baseline:
            candidate = baseline_candidate(baseline, self.budget)
            return {"candidate": self._payload(trial, candidate.config)}
        values = self.space.suggest(trial)
        try:
            candidate = self.space.decode(values, self.budget)
        except InfeasibleError as exc:
            trial.set_user_attr("error", f"infeasible: {exc}")
            return {"candidate": {"infeasible": str(exc), "number": trial.number}}
        return {"candidate": self._payload(trial, candidate.config)}

    def _payload(self, trial: Any, config: ReXNetConfig) -> dict[str, Any]:
        record = candidate_record(
            config, self.budget.resolution, self.budget.predict_ms(config), num_classes=self.num_classes
        )
        for key, value in record.items():
            trial.set_user_attr(key, value)
        return {
            "config": record["config"],
            "macs": record["macs"],
            "params": record["params"],
            "latency_ms": record.get("latency_ms"),
            "number": trial.number,
        }


# ---------------------------------------------------------------------------- resume
def mark_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Record a RUNNING trial FAIL as interrupted (it is run again by ``resume``)."""
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    storage.set_trial_user_attr(trial._trial_id, "error", INTERRUPTED_ERROR)
    study.tell(trial.number, state=TrialState.FAIL)


def fail_running(study: optuna.Study) -> int:
    """Mark every trial left RUNNING (by Ctrl-C, or a driver that died) interrupted; their count."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        mark_interrupted(study, t)
    return len(running)


def prepare_resume(study: optuna.Study) -> dict[str, int]:
    """Mark orphaned RUNNING trials interrupted and enqueue every interrupted trial again.

    Returns counts: ``orphans`` marked now, ``reruns`` enqueued now, ``finished`` trials
    that count toward ``--trials`` (interrupted ones do not).
    """
    orphans = fail_running(study)
    trials = study.get_trials(deepcopy=False)
    rerun_of = {t.user_attrs.get("rerun_of") for t in trials}
    reruns = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in rerun_of:
            attrs: dict[str, Any] = {"rerun_of": t.number}
            if t.user_attrs.get("baseline"):
                attrs["baseline"] = t.user_attrs["baseline"]
            study.enqueue_trial(dict(t.params), user_attrs=attrs)
            reruns += 1
    return {"orphans": orphans, "reruns": reruns, "finished": count_finished(study)}


def check_resumable(run: RunInfo) -> None:
    """Refuse to resume a run whose study is missing, renamed or empty (resume never starts over).

    Opens the study without creating anything: a missing SQLite file, a study name the storage
    does not hold, or a study without trials is a :class:`UserError`.
    """
    study = run.open_study()
    if not study.get_trials(deepcopy=False, states=None):
        raise UserError(
            f"the study {run.study_name!r} of {run.path} holds no trials, so there is nothing to resume "
            "(resume never starts a search from zero); start a new run with rexsearch run"
        )


def count_finished(study: optuna.Study) -> int:
    """Finished trials that count toward ``--trials`` (interrupted ones are rerun instead)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in FINISHED and not t.user_attrs.get("interrupted")
    )


def enqueue_baselines(study: optuna.Study, budget: Budget) -> list[str]:
    """Enqueue the baselines that fit the budget and are not in the study yet (first in line)."""
    present = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)}
    names = [name for name in baseline_configs(budget) if name not in present]
    for name in names:
        study.enqueue_trial({}, user_attrs={"baseline": name})
    return names


# ---------------------------------------------------------------------------- outcomes
def record_outcome(
    study: optuna.Study,
    trial_id: int,
    result: dict | None,
    error: bool,
    objectives: tuple[str, ...],
    budget: Budget,
    early_stopped: bool,
    error_message: str | None = None,
) -> TrialState:
    """Write a finished trial's measurements, constraints and state (COMPLETE/PRUNED/FAIL)."""
    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if frozen.state.is_finished():  # already recorded (e.g. before a crash)
        return frozen.state
    result = result or {}
    measured = result_record(result)
    for key, value in measured.items():
        storage.set_trial_user_attr(trial_id, key, value)
    constraints = constraint_values({**frozen.user_attrs, **measured}, budget)
    if constraints is not None:
        storage.set_trial_system_attr(trial_id, CONSTRAINTS_ATTR, constraints)
    values = None
    if error:
        reason = error_message or "out of memory or a crash; see the Ray logs of the run"
        storage.set_trial_user_attr(trial_id, "error", error_text(f"the trial's worker died: {reason}"))
        state = TrialState.FAIL
    elif result.get("error"):
        storage.set_trial_user_attr(trial_id, "error", error_text(result["error"]))
        state = TrialState.FAIL
    elif result.get("infeasible"):
        state = TrialState.PRUNED
    elif result.get("final"):
        values = [float(result[o]) for o in objectives]
        state = TrialState.COMPLETE if all(math.isfinite(v) for v in values) else TrialState.FAIL
        if state == TrialState.FAIL:
            storage.set_trial_user_attr(trial_id, "error", f"non-finite objective values {values}")
            values = None
    elif early_stopped:
        state = TrialState.PRUNED
    else:
        mark_interrupted(study, frozen)
        return TrialState.FAIL
    study.tell(frozen.number, values, state=state)
    return state
