"""The search: Ray Tune runs proxy trials, Optuna (RDB storage) chooses them.

Data flow: a space's variables are drawn by Optuna's sampler through a picklable
define-by-run object (:class:`TrialDecoder`), decoded into a config inside the budget,
evaluated by :func:`trial_function` on a Ray worker (fvcore check, feature rank, proxy
training), and told back to the study by :class:`StudySearcher`, which also records
the user attributes of design.md, the constraints, and the right final state:

* COMPLETE — all epochs trained (or the rank measured, for ``--objectives rank``);
* PRUNED — stopped early by the ASHA scheduler (multi-fidelity), or infeasible;
* FAIL — an exception, a non-finite loss, a dead worker (out of memory), or an
  interruption (Ctrl-C, a killed driver); interrupted trials are rerun by ``resume``.

Resume does not depend on Tune's periodic experiment snapshot: the study in storage is
the source of truth. On resume, trials left RUNNING by a dead driver are marked FAIL
(``interrupted``), every interrupted trial is enqueued again with its parameters, and
the new session runs exactly the trials still missing.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Callback, Stopper
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from rexsearch import __version__
from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost
from rexsearch.errors import UserError
from rexsearch.proxy import proxy_config
from rexsearch.rundir import STUDY_DB, RunInfo, load_run, write_run_json
from rexsearch.space import Budget, InfeasibleError, Space, baseline_candidate, baseline_configs, load_space
from rexsearch.storage import mask_url, open_storage

log = logging.getLogger(__name__)

OBJECTIVES = ("accuracy", "rank")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
PROXY_RESOLUTION = 32
PROXY_CLASSES = 100
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class SearchSettings:
    """Everything a run needs; recorded in run.json (the contract of ``rexsearch run``)."""

    run_dir: str
    flops_budget: int
    params_budget: int | None = None
    resolution: int = 224
    space: str = "rexnet"
    objectives: tuple[str, ...] = OBJECTIVES
    sampler: str = "tpe"
    trials: int = 64
    epochs: int = 30
    train_images: int | None = None
    val_images: int = 5000
    batch_size: int = 128
    seed: int = 0
    data_dir: str | None = None
    storage: str | None = None
    study_name: str = "rexsearch"
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 10
    storage_path: str | None = None
    trial_timeout: float | None = None
    trial_retries: int = 2
    keep_weights: bool = False
    rank_samples: int | None = None
    asha_min_epochs: int = 4

    @property
    def budget(self) -> Budget:
        return Budget(self.flops_budget, self.params_budget, self.resolution)

    @property
    def needs_data(self) -> bool:
        return "accuracy" in self.objectives

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.run_dir).resolve() / STUDY_DB).as_posix()}"

    def validate(self) -> None:
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise UserError(
                f"--objectives must be a comma-separated subset of {', '.join(OBJECTIVES)}, "
                f"got {','.join(self.objectives)!r}"
            )
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        for name in ("trials", "epochs", "batch_size", "val_images", "resolution"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer")
        if self.train_images is not None and self.train_images < 1:
            raise UserError("--train-images must be a positive integer")
        if self.cpus_per_trial is not None and self.cpus_per_trial <= 0:
            raise UserError(f"--cpus-per-trial must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise UserError(f"--gpus-per-trial must not be negative, got {self.gpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UserError(f"--max-concurrent must be a positive integer, got {self.max_concurrent}")
        if self.trial_timeout is not None and not self.trial_timeout > 0:
            raise UserError(f"--trial-timeout must be a positive number of seconds, got {self.trial_timeout}")
        if self.trial_retries < 0:
            raise UserError(f"--trial-retries must not be negative, got {self.trial_retries}")

    def ray_storage_path(self) -> str:
        """Where Ray Tune keeps the experiment: ``--storage-path`` or RUN_DIR/ray (one node only)."""
        return self.storage_path or str(Path(self.run_dir).resolve() / "ray")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objectives"] = list(self.objectives)
        return data


# ---------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class TrialDecoder:
    """Optuna define-by-run space: draws the variables, solves the width, sets user attrs.

    A class instance (not a closure) so that Ray Tune can pickle the searcher's state.
    Baselines are enqueued trials carrying a ``baseline`` user attribute and no params.
    """

    space: Space
    budget: Budget

    def __call__(self, trial: Any) -> dict[str, Any]:
        baseline = trial.user_attrs.get("baseline")
        if baseline:
            candidate = baseline_candidate(baseline, self.budget)
            return {"candidate": _candidate_payload(trial, candidate.config)}
        values = self.space.suggest(trial)
        try:
            candidate = self.space.decode(values, self.budget)
        except InfeasibleError as exc:
            trial.set_user_attr("error", f"infeasible: {exc}")
            return {"candidate": {"infeasible": str(exc), "number": trial.number}}
        return {"candidate": _candidate_payload(trial, candidate.config)}


def _candidate_payload(trial: Any, config: ReXNetConfig) -> dict[str, Any]:
    cost = count_cost(config, _budget_resolution(trial))
    proxy = proxy_config(config, PROXY_RESOLUTION, PROXY_CLASSES)
    proxy_macs = count_cost(proxy, PROXY_RESOLUTION).macs
    attrs = {
        "config": config.to_dict(),
        "config_hash": config.short_hash(),
        "macs": cost.macs,
        "params": cost.params,
        "fvcore_total": cost.fvcore_total,
        "proxy_config": proxy.to_dict(),
        "proxy_macs": proxy_macs,
        "expand_layers": config.expand_layers,
        "channels": " ".join(map(str, config.out_channels)),
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return {"config": config.to_dict(), "macs": cost.macs, "params": cost.params, "number": trial.number}


def _budget_resolution(trial: Any) -> int:
    return int(trial.study.user_attrs.get("resolution", 224))


# ---------------------------------------------------------------------------- the trial
def trial_function(tune_config: dict[str, Any], split: Any = None, job: dict[str, Any] | None = None) -> None:
    """One trial on a Ray worker: fvcore check, rank, proxy training; everything reported.

    Errors of the trial's own work are reported as ``{"error": ...}`` (the searcher
    records FAIL with the message); Tune's own control flow is never swallowed.
    """
    import ray
    import torch
    from ray import tune

    job = job or {}
    candidate = tune_config["candidate"]
    nan = float("nan")
    base: dict[str, Any] = {o: nan for o in job.get("objectives", OBJECTIVES)}
    base.update(epoch=0, final=False, node=ray.get_runtime_context().get_node_id())
    if "infeasible" in candidate:
        tune.report({**base, "final": True, "infeasible": candidate["infeasible"]})
        return
    threads = max(1, int(job.get("cpus_per_trial") or 1))
    torch.set_num_threads(threads)
    collected: dict[str, Any] = {}
    try:
        _run_trial(candidate, split, job, base, collected, Deadline(job.get("trial_timeout")))
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):
            raise
        message = f"{type(exc).__name__}: {exc}"
        log.debug("trial failed: %s", traceback.format_exc())
        tune.report({**base, **collected, "final": True, "error": message})


def _run_trial(
    candidate: dict[str, Any],
    split: Any,
    job: dict[str, Any],
    base: dict[str, Any],
    collected: dict[str, Any],
    deadline: Deadline,
) -> None:
    from ray import tune

    from rexsearch.cost import measure_cost
    from rexsearch.rank import measure_rank

    config = ReXNetConfig.from_dict(candidate["config"])
    resolution = int(job.get("resolution", 224))
    measured = measure_cost(config, resolution)
    collected["fvcore_macs"] = measured.macs
    if (measured.macs, measured.params) != (candidate["macs"], candidate["params"]):
        raise RuntimeError(
            f"fvcore measured {measured.macs:,} MACs / {measured.params:,} params, the analytic count "
            f"said {candidate['macs']:,} / {candidate['params']:,}"
        )
    deadline.check("after the fvcore count")
    proxy = proxy_config(config, PROXY_RESOLUTION, PROXY_CLASSES)
    rank_kwargs = {"samples": job["rank_samples"]} if job.get("rank_samples") else {}
    rank = measure_rank(proxy, resolution=PROXY_RESOLUTION, seed=int(job.get("seed", 0)), **rank_kwargs)
    collected.update(
        rank_value=rank.rank,
        rank_per_layer=[layer.to_dict() for layer in rank.per_layer],
        nuclear_norm=rank.nuclear_norm,
    )
    deadline.check("after the rank measurement")
    objectives = job.get("objectives", OBJECTIVES)
    out = {**base, "rank": rank.rank, **collected}
    if "accuracy" not in objectives:
        tune.report({**out, "final": True})
        return
    from rexsearch.train import TrainSettings, train_proxy

    settings = TrainSettings(**job["train"])
    curve: list[float] = []

    def on_epoch(m: Any) -> None:
        curve.append(m.val_top1)
        if m.epoch < settings.epochs:  # epochs count from 1; the last one is reported below
            tune.report(
                {
                    **out,
                    "epoch": m.epoch,
                    "accuracy": m.val_top1,
                    "train_loss": m.train_loss,
                    "accuracy_curve": list(curve),
                }
            )

    def on_step(step: int, total: int) -> None:
        deadline.check(f"at training step {step} of {total}")

    result = train_proxy(config, split, settings, callback=on_epoch, progress=on_step)
    if job.get("weights_dir"):
        _save_weights(result.model, Path(job["weights_dir"]) / f"trial-{candidate['number']}.safetensors")
    tune.report(
        {
            **out,
            "epoch": len(result.accuracy_curve),
            "accuracy": result.final_accuracy,
            "accuracy_curve": list(result.accuracy_curve),
            "train_seconds": result.train_seconds,
            "images_per_s": result.images_per_s,
            "final": True,
        }
    )


class TrialTimeoutError(RuntimeError):
    """A trial ran past ``--trial-timeout``; the search records it FAIL."""


class Deadline:
    """The wall-clock limit of one trial attempt, checked between its steps."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def check(self, where: str) -> None:
        if self.seconds is None:
            return
        elapsed = time.monotonic() - self.start
        if elapsed > self.seconds:
            raise TrialTimeoutError(
                f"the trial ran past --trial-timeout {self.seconds:g} s ({elapsed:.1f} s, stopped {where})"
            )


def _save_weights(model: Any, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    tmp.replace(path)


# ---------------------------------------------------------------------------- study
def make_sampler(name: str, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for ``--sampler`` (seeded)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, 4 * n_objectives)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(settings: SearchSettings, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create or load the study, with metric names and the budget recorded on it."""
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        directions=["maximize"] * len(settings.objectives),
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
    return study


def prepare_resume(study: optuna.Study) -> dict[str, int]:
    """Mark orphaned RUNNING trials FAIL (interrupted) and enqueue every interrupted trial again.

    Returns counts: ``orphans`` marked now, ``reruns`` enqueued now, ``finished`` trials
    that count toward ``--trials`` (interrupted ones do not).
    """
    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    orphans = 0
    for t in trials:
        if t.state == TrialState.RUNNING:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the search stopped while it ran")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            orphans += 1
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


# ---------------------------------------------------------------------------- progress
@dataclass
class Progress:
    """What the live view shows; updated by the Tune callback on the driver."""

    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    pruned: int = 0
    best_accuracy: float | None = None
    best_rank: float | None = None
    started: float = field(default_factory=time.time)

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    @property
    def eta(self) -> float | None:
        finished = self.done + self.failed + self.pruned
        if not finished:
            return None
        return self.elapsed / finished * max(self.total - finished, 0)


class LiveView(Callback):
    """Tune callback keeping :class:`Progress` current and counting failures."""

    def __init__(
        self,
        progress: Progress,
        on_progress: Callable[[Progress], None] | None,
        failures: list[int],
        on_event: Callable[[str], None] | None = None,
        note_error: Callable[[str, str], None] | None = None,
    ):
        self.progress = progress
        self.on_progress = on_progress
        self.failures = failures
        self.on_event = on_event
        self.note_error = note_error
        self._auth_hinted = False

    def _update(self, trials: list[Any]) -> None:
        self.progress.running = sum(t.status == "RUNNING" for t in trials)
        if self.on_progress:
            self.on_progress(self.progress)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        p = self.progress
        result = trial.last_result or {}
        if result.get("error"):
            p.failed += 1
            self.failures[0] += 1
        elif result.get("final") and not result.get("infeasible"):
            p.done += 1
            for key, attr in (("accuracy", "best_accuracy"), ("rank", "best_rank")):
                value = result.get(key)
                if isinstance(value, float) and math.isfinite(value):
                    current = getattr(p, attr)
                    setattr(p, attr, value if current is None else max(current, value))
        else:
            p.pruned += 1
        self._update(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.failed += 1
        self.failures[0] += 1
        message = trial_error_message(trial)
        if self.note_error and message:
            self.note_error(trial.trial_id, message)
        if self.on_event and message and _is_auth_error(message) and not self._auth_hinted:
            self._auth_hinted = True
            self.on_event(f"Ray refused a trial for authentication: {_auth_hint()}")
        self._update(trials)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if self.on_event:
            message = trial_error_message(trial) or "its worker died"
            self.on_event(
                f"trial {trial.trial_id} is retried ({trial.num_failures} of --trial-retries "
                f"{trial.max_failures}): {message}"
            )


def _auth_hint() -> str:
    return (
        f"the driver's RAY_AUTH_MODE (here: {os.environ.get('RAY_AUTH_MODE', 'unset')}) must match the "
        "one `ray start` ran with on every node (Ray 2.60 defaults to token auth, with the token in "
        "~/.ray/auth_token); export the same RAY_AUTH_MODE (and token) everywhere"
    )


def _is_auth_error(message: str) -> bool:
    lowered = message.lower()
    return any(k in lowered for k in ("authorization header", "invalidauthtoken", "authentication token"))


def trial_error_message(trial: Any) -> str:
    """The last line of a Tune trial's error (e.g. ``ActorDiedError: ...``), or ''."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    if any(_is_auth_error(line) for line in lines):
        return next(line for line in lines if _is_auth_error(line))[:500]
    return lines[-1][:500]


# ---------------------------------------------------------------------------- Tune glue
class StudySearcher(OptunaSearch):
    """OptunaSearch that records design.md's user attributes, constraints and true states."""

    def __init__(
        self, *args: Any, objectives: tuple[str, ...], budget: Budget, pruned_ids: set[str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._objectives = tuple(objectives)
        self._budget = budget
        self._pruned_ids = pruned_ids
        self._dead: set[str] = set()
        self._messages: dict[str, str] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if len(self._objectives) == 1 and trial_id not in self._completed_trials:
            value = result.get(self._objectives[0])
            if isinstance(value, (int, float)) and math.isfinite(value) and not result.get("final"):
                self._ot_trials[trial_id].report(float(value), int(result.get("epoch", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if error and trial_id not in self._dead:
            # Tune tells the searcher before its callbacks, which know the error's text: the
            # trial is recorded by note_error, or by flush_errors when no callback came
            self._dead.add(trial_id)
            return
        self._completed_trials.add(trial_id)
        self._dead.discard(trial_id)
        record_outcome(
            self._ot_study,
            self._ot_trials[trial_id]._trial_id,
            result,
            error,
            self._objectives,
            self._budget,
            trial_id in self._pruned_ids,
            self._messages.pop(trial_id, None),
        )

    def note_error(self, trial_id: str, message: str) -> None:
        """Record a trial whose worker died (retries spent) FAIL with Tune's own message."""
        if trial_id in self._dead:
            self._messages[trial_id] = message
            self.on_trial_complete(trial_id, error=True)

    def flush_errors(self) -> None:
        """Record dead trials no callback reported on (kept RUNNING until now)."""
        for trial_id in list(self._dead):
            self.on_trial_complete(trial_id, error=True)


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
    """Write a finished trial's attributes, constraints and state (COMPLETE/PRUNED/FAIL)."""
    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if frozen.state.is_finished():  # already recorded (e.g. before a crash)
        return frozen.state
    result = result or {}
    attrs = {
        "rank": result.get("rank_value"),
        "rank_per_layer": result.get("rank_per_layer"),
        "nuclear_norm": result.get("nuclear_norm"),
        "fvcore_macs": result.get("fvcore_macs"),
        "accuracy_curve": result.get("accuracy_curve"),
        "train_seconds": result.get("train_seconds"),
        "node": result.get("node"),
    }
    for key, value in attrs.items():
        if value is not None:
            storage.set_trial_user_attr(trial_id, key, value)
    macs, params = frozen.user_attrs.get("macs"), frozen.user_attrs.get("params")
    if macs is not None:
        constraints = [float(macs - budget.macs)]
        if budget.params is not None:
            constraints.append(float(params - budget.params))
        storage.set_trial_system_attr(trial_id, "constraints", constraints)
    values = None
    if error:
        reason = error_message or "out of memory or a crash; see the Ray logs of the run"
        storage.set_trial_user_attr(trial_id, "error", f"the trial's worker died: {reason}"[:2000])
        state = TrialState.FAIL
    elif result.get("error"):
        storage.set_trial_user_attr(trial_id, "error", str(result["error"])[:2000])
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
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_user_attr(trial_id, "error", "interrupted: the search stopped while it ran")
        state = TrialState.FAIL
    study.tell(frozen.number, values, state=state)
    return state


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped, so they are recorded PRUNED."""

    def __init__(self, stopped: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped = stopped

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not result.get("final"):
            self.stopped.add(trial.trial_id)
        return decision


class FailureStopper(Stopper):
    """Stops the experiment once ``max_failures`` trials have failed."""

    def __init__(self, max_failures: int, failures: list[int]) -> None:
        self.max_failures = max_failures
        self.failures = failures

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.failures[0] >= self.max_failures


# ---------------------------------------------------------------------------- Ray
def ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), reuse a running Ray, or start a local one.

    Returns True when this call started Ray (so the caller shuts it down again).
    """
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "a local Ray"
        hint = (
            f"; if a Ray head runs there, {_auth_hint()}"
            if address and isinstance(exc, ConnectionError)
            else ""
        )
        raise UserError(f"cannot start or join Ray ({where}): {exc}{hint}") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail at once when nothing listens at a HOST:PORT address (ray.init would retry for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", "local" and ray:// client addresses are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"cannot join Ray at {address}: nothing answers there ({exc.strerror or exc}); start the "
            f"head with `ray start --head --port {port}` there, or fix --address / RAY_ADDRESS"
        ) from None


def check_resources(cpus: float, gpus: float) -> dict[str, float]:
    """Refuse per-trial requests that no node can satisfy (Tune would wait forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    best_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    fits = any(n.get("CPU", 0.0) >= cpus and n.get("GPU", 0.0) >= gpus for n in nodes)
    if not fits:
        raise UserError(
            f"no Ray node can run a trial with {cpus:g} CPU and {gpus:g} GPU (the largest node has "
            f"{best_cpu:g} CPU and {best_gpu:g} GPU); lower --cpus-per-trial/--gpus-per-trial"
        )
    total = ray.cluster_resources()
    return {"CPU": total.get("CPU", 0.0), "GPU": total.get("GPU", 0.0), "nodes": float(len(nodes))}


def check_cluster(settings: SearchSettings, nodes: int) -> None:
    """A cluster of several nodes needs ``--storage-path`` on storage every node reaches."""
    if nodes > 1 and not settings.storage_path:
        raise UserError(
            f"this Ray cluster has {nodes} nodes, so Ray Tune's experiment folder must be on storage "
            "every node can write: pass --storage-path with a shared path (an NFS mount present at "
            "the same path on every node) or a URI such as s3://bucket/prefix"
        )


def default_resources(settings: SearchSettings) -> tuple[float, float]:
    """Per-trial CPUs and GPUs: the flags, or what the cluster suggests."""
    import ray

    total = ray.cluster_resources()
    gpus_total = total.get("GPU", 0.0)
    gpus = settings.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if gpus_total else 0.0
    cpus = settings.cpus_per_trial
    if cpus is None:
        if gpus:
            cpus = max(1.0, math.floor(total.get("CPU", 1.0) / max(1.0, gpus_total / gpus)))
        else:
            cpus = max(1.0, min(total.get("CPU", 1.0), 2.0))
    return cpus, gpus


# ---------------------------------------------------------------------------- the run
@dataclass
class SearchOutcome:
    """What a finished (or interrupted) session produced."""

    run: RunInfo
    finished: int
    target: int
    interrupted: bool
    stopped_by_failures: bool
    resume_counts: dict[str, int] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    import ray
    import torch

    return {
        "rexsearch": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "ray": ray.__version__,
    }


def start_run(settings: SearchSettings, argv: list[str]) -> Path:
    """Validate a new run and create its directory with run.json (nothing else is written)."""
    run_dir = Path(settings.run_dir)
    if (run_dir / "run.json").exists():
        raise UserError(
            f"{run_dir} already holds a run; continue it with `rexsearch resume {run_dir}` "
            "or choose another --run-dir"
        )
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} exists and is not empty; choose another --run-dir")
    if settings.storage:  # a shared database may already hold a study of that name
        names = {s.study_name for s in open_storage(settings.storage).get_all_studies()}
        if settings.study_name in names:
            raise UserError(
                f"the study {settings.study_name!r} already exists in {mask_url(settings.storage)}; "
                "choose another --study-name for a new run, or continue that run with rexsearch resume"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    space = load_space(settings.space)
    fidelity = {
        "epochs": settings.epochs,
        "train_images": settings.train_images,
        "batch_size": settings.batch_size,
        "val_images": settings.val_images,
    }
    write_run_json(
        run_dir,
        {
            "command": list(argv),
            "versions": _versions(),
            "seed": settings.seed,
            "budget": {
                "flops": settings.flops_budget,
                "params": settings.params_budget,
                "resolution": settings.resolution,
            },
            "space": {"name": space.name, "path": space.path, "definition": space.to_dict()},
            "objectives": list(settings.objectives),
            "fidelity": fidelity,
            "storage": settings.storage_url(),
            "study_name": settings.study_name,
            "sampler": settings.sampler,
            "trials": settings.trials,
            "settings": settings.to_dict(),
        },
    )
    return run_dir


def settings_from_run(run: RunInfo, **overrides: Any) -> SearchSettings:
    """The settings a run was started with (run.json), with ``overrides`` applied."""
    data = dict(run.data["settings"])
    data["objectives"] = tuple(data["objectives"])
    data["run_dir"] = str(run.path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return SearchSettings(**data)


def execute(
    settings: SearchSettings,
    split: Any = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[str], None] | None = None,
    trainable_fn: Callable[..., None] | None = None,
) -> SearchOutcome:
    """Run (or continue) the search of ``settings.run_dir`` until ``--trials`` trials finished.

    Ray must be initialised (see :func:`ensure_ray`); ``split`` is the training/validation
    data for the accuracy objective (shared with trials through Ray's object store).
    ``trainable_fn`` replaces :func:`trial_function` (benchmarks of the orchestration).
    """
    from ray import tune

    run = load_run(settings.run_dir)
    space = load_space(run.data["space"]["path"])
    budget = settings.budget
    cpus, gpus = default_resources(settings)
    check_cluster(settings, int(check_resources(cpus, gpus)["nodes"]))
    storage = open_storage(settings.storage_url())
    study = open_study(settings, storage)
    counts = prepare_resume(study)
    added = enqueue_baselines(study, budget)
    if on_event and added:
        on_event(f"baselines enqueued: {', '.join(added)}")
    remaining = settings.trials - counts["finished"]
    target = settings.trials
    if remaining <= 0:
        return SearchOutcome(run, counts["finished"], target, False, False, counts)

    pruned_ids: set[str] = set()
    scheduler = None
    if settings.needs_data and settings.epochs >= settings.asha_min_epochs:
        scheduler = RecordingASHA(
            stopped=pruned_ids,
            time_attr="epoch",
            metric="accuracy",
            mode="max",
            max_t=settings.epochs,
            grace_period=max(1, settings.epochs // 8),
            reduction_factor=3,
        )
    searcher = StudySearcher(
        TrialDecoder(space, budget),
        metric=list(settings.objectives) if len(settings.objectives) > 1 else settings.objectives[0],
        mode=["max"] * len(settings.objectives) if len(settings.objectives) > 1 else "max",
        sampler=make_sampler(settings.sampler, settings.seed, len(settings.objectives)),
        study_name=settings.study_name,
        storage=storage,
        objectives=settings.objectives,
        budget=budget,
        pruned_ids=pruned_ids,
    )
    job = {
        "objectives": list(settings.objectives),
        "resolution": settings.resolution,
        "seed": settings.seed,
        "cpus_per_trial": cpus,
        "trial_timeout": settings.trial_timeout,
        "rank_samples": settings.rank_samples,
        "weights_dir": str(run.path / "weights") if settings.keep_weights else None,
        "train": {"epochs": settings.epochs, "batch_size": settings.batch_size, "seed": settings.seed},
    }
    trainable = tune.with_resources(
        tune.with_parameters(trainable_fn or trial_function, split=split, job=job), {"cpu": cpus, "gpu": gpus}
    )
    progress = Progress(total=target, done=counts["finished"])
    failures = [0]
    session = time.strftime("session-%Y%m%d-%H%M%S")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=settings.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=session,
            storage_path=settings.ray_storage_path(),
            verbose=0,
            stop=FailureStopper(settings.max_failures, failures),
            callbacks=[LiveView(progress, on_progress, failures, on_event, searcher.note_error)],
            # retried: trials whose worker or node died; a trial's own errors are reported, not raised
            failure_config=tune.FailureConfig(max_failures=settings.trial_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    interrupted = False
    try:
        tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    searcher.flush_errors()
    finished = count_finished(study)
    if finished < target and failures[0] < settings.max_failures:
        interrupted = True
    _fail_running(study)
    return SearchOutcome(run, finished, target, interrupted, failures[0] >= settings.max_failures, counts)


def _fail_running(study: optuna.Study) -> None:
    """Trials this session left RUNNING (stopped by Ctrl-C) are FAIL and interrupted."""
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the search stopped while it ran")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def load_split(settings: SearchSettings, progress: Callable[[int, int], None] | None = None) -> Any:
    """CIFAR-100's search split (train/validation of the training set) for the accuracy objective."""
    from rexsearch.data import load_cifar100, search_split

    data = load_cifar100(settings.data_dir, progress=progress)
    return search_split(
        data, val_images=settings.val_images, train_images=settings.train_images, seed=settings.seed
    )


def pareto_rows(study: optuna.Study, budget: Budget) -> list[dict[str, Any]]:
    """The feasible Pareto front of the study's COMPLETE trials, best first."""
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("macs", math.inf) <= budget.macs
        and (budget.params is None or t.user_attrs.get("params", 0) <= budget.params)
    ]
    front = []
    for t in complete:
        dominated = any(
            all(o >= v for o, v in zip(other.values, t.values, strict=True))
            and any(o > v for o, v in zip(other.values, t.values, strict=True))
            for other in complete
        )
        if not dominated:
            front.append(t)
    names = study.metric_names or [f"objective{i}" for i in range(len(study.directions))]
    rows = []
    for t in sorted(front, key=lambda t: (-t.values[0], t.user_attrs.get("macs", 0))):
        cfg = t.user_attrs.get("config") or {}
        rows.append(
            {
                "trial": t.number,
                "macs": t.user_attrs.get("macs"),
                "params": t.user_attrs.get("params"),
                **{n: v for n, v in zip(names, t.values, strict=True)},
                "expand_layers": t.user_attrs.get("expand_layers"),
                "nonlinearity": cfg.get("activation"),
                "baseline": t.user_attrs.get("baseline", ""),
            }
        )
    return rows


def estimate_cpu_seconds(settings: SearchSettings, images_per_s: float) -> float:
    """Rough wall time of the run's training on this machine, from a measured throughput."""
    train_images = settings.train_images or 50000 - settings.val_images
    per_trial = settings.epochs * (train_images + settings.val_images / 3) / max(images_per_s, 1e-9)
    return per_trial * settings.trials


def measure_throughput(settings: SearchSettings, steps: int = 2) -> float:
    """Training images/s of the budget's linear baseline proxy here (a few steps)."""
    import torch

    from rexsearch.model import build_model

    try:
        base = baseline_candidate("rexnet-linear", settings.budget).config
    except InfeasibleError:
        return float("nan")
    model = build_model(proxy_config(base, PROXY_RESOLUTION, PROXY_CLASSES)).to(
        memory_format=torch.channels_last
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(settings.batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, PROXY_CLASSES, (settings.batch_size,))
    loss_fn = torch.nn.CrossEntropyLoss()
    start = None
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * settings.batch_size / (time.perf_counter() - start)


__all__ = [
    "SearchOutcome",
    "SearchSettings",
    "TrialDecoder",
    "ensure_ray",
    "execute",
    "load_split",
    "pareto_rows",
    "prepare_resume",
    "record_outcome",
    "settings_from_run",
    "start_run",
    "trial_function",
]
