"""Ray Tune glue: the Optuna searcher that records outcomes, ASHA, the stopper, the live view.

:class:`StudySearcher` extends Ray's ``OptunaSearch``. Ray keeps the bookkeeping it needs
in private attributes (``_ot_study``, ``_ot_trials``, ``_completed_trials``, as of Ray
2.60); they are read only through the three accessors at the top of the class, so a Ray
upgrade that renames them breaks one place.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from ray.tune import Callback, Stopper
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from rexsearch.search.cluster import auth_hint, is_auth_error
from rexsearch.search.study import record_outcome
from rexsearch.space import Budget


class StudySearcher(OptunaSearch):
    """OptunaSearch that records design.md's user attributes, constraints and true states."""

    def __init__(
        self,
        *args: Any,
        objectives: tuple[str, ...],
        budget: Budget,
        pruned_ids: set[str],
        deadline: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline  # time.monotonic() after which no trial is suggested (--time-budget)
        self._objectives = tuple(objectives)
        self._budget = budget
        self._pruned_ids = pruned_ids
        self._dead: set[str] = set()
        self._messages: dict[str, str] = {}
        self._driver_latency: dict[str, tuple[float | None, str]] = {}

    def suggest(self, trial_id: str) -> dict | str | None:
        """A new trial's config, or FINISHED once the time budget is spent: running trials end
        as they would, no further one starts."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return Searcher.FINISHED
        return super().suggest(trial_id)

    # OptunaSearch's private state, read only here -------------------------------------
    @property
    def study(self) -> optuna.Study:
        """The Optuna study OptunaSearch drives (``_ot_study``)."""
        return self._ot_study

    def optuna_trial(self, trial_id: str) -> optuna.Trial | None:
        """The Optuna trial behind a Tune trial id (``_ot_trials``), if this searcher made it."""
        return self._ot_trials.get(trial_id)

    def _told(self, trial_id: str, mark: bool = False) -> bool:
        """Whether OptunaSearch has finished with the trial (``_completed_trials``); ``mark`` sets it."""
        if mark:
            self._completed_trials.add(trial_id)
        return trial_id in self._completed_trials

    # pickled state: Ray Tune writes the searcher into tuner.pkl and searcher-state-*.pkl ----
    #: Attributes that carry the Optuna storage, whose URL may hold a database password.
    _UNPICKLED = ("_storage", "_ot_study", "_ot_trials")

    def __getstate__(self) -> dict[str, Any]:
        """The state without the storage: no password ends up in Tune's pickles.

        ``resume`` never restores a searcher from Tune's files (the study in storage is the
        source of truth), so nothing is lost.
        """
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.update(dict.fromkeys(self._UNPICKLED))

    def save(self, checkpoint_path: str) -> None:
        """Tune's periodic searcher snapshot, without the storage (see :meth:`__getstate__`)."""
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Not used: a resumed session builds a new searcher on the study in storage."""

    # -----------------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if len(self._objectives) == 1 and not self._told(trial_id):
            value = result.get(self._objectives[0])
            trial = self.optuna_trial(trial_id)
            finite = isinstance(value, (int, float)) and math.isfinite(value)
            if trial is not None and finite and not result.get("final"):
                trial.report(float(value), int(result.get("epoch", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.optuna_trial(trial_id)
        if self._told(trial_id) or trial is None:
            return
        if error and trial_id not in self._dead:
            # Tune tells the searcher before its callbacks, which know the error's text: the
            # trial is recorded by note_error, or by flush_errors when no callback came
            self._dead.add(trial_id)
            return
        self._told(trial_id, mark=True)
        self._dead.discard(trial_id)
        if result and result.get("final") and not error:
            result = self._measure_on_driver(trial, result)
        record_outcome(
            self.study,
            trial._trial_id,
            result,
            error,
            self._objectives,
            self._budget,
            trial_id in self._pruned_ids,
            self._messages.pop(trial_id, None),
        )

    def _measure_on_driver(self, trial: optuna.Trial, result: dict) -> dict:
        """A trial whose worker was not the latency table's device is timed here, once per config,
        when this driver is that device; otherwise the result is left as the worker sent it."""
        table = self._budget.latency_table
        if table is None or result.get("latency_measured_ms") is not None:
            return result
        if result.get("error") or result.get("infeasible"):
            return result
        config = trial.user_attrs.get("config")
        if not isinstance(config, dict):
            return result
        from rexsearch.config import ReXNetConfig
        from rexsearch.latency import measure_for_trial

        cfg = ReXNetConfig.from_dict(config)
        key = cfg.short_hash()
        if key not in self._driver_latency:
            self._driver_latency[key] = measure_for_trial(
                cfg, self._budget.resolution, table.environment, where="driver"
            )
        measured, note = self._driver_latency[key]
        if measured is None:
            return result  # neither the worker nor the driver is the table's device: judged by prediction
        out = {
            **result,
            "latency_measured_ms": measured,
            "latency_note": f"{note}; the worker: {result.get('latency_note', 'not measured')}",
        }
        if "latency" in self._objectives:
            out["latency"] = float(measured)
        return out

    def note_error(self, trial_id: str, message: str) -> None:
        """Record a trial whose worker died (retries spent) FAIL with Tune's own message."""
        if trial_id in self._dead:
            self._messages[trial_id] = message
            self.on_trial_complete(trial_id, error=True)

    def flush_errors(self) -> None:
        """Record dead trials no callback reported on (kept RUNNING until now)."""
        for trial_id in list(self._dead):
            self.on_trial_complete(trial_id, error=True)


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


# ---------------------------------------------------------------------------- sessions
def trainable(fn: Callable[..., None], split: Any, job: Any, resources: Any) -> Any:
    """``fn`` as a Tune trainable with the session's data, job and per-trial resources."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(fn, split=split, job=job),
        {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial},
    )


def run_config(settings: Any, prefix: str, callbacks: list[Any], stop: Any = None) -> Any:
    """Ray Tune's RunConfig of a session: a dated experiment under the run's storage path;
    trials whose worker or node died are retried (``--trial-retries``), a trial's own
    errors are reported, not raised."""
    from ray import tune

    return tune.RunConfig(
        name=time.strftime(f"{prefix}-%Y%m%d-%H%M%S"),
        storage_path=settings.ray_storage_path(),
        verbose=0,
        stop=stop,
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=settings.trial_retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )


def fit(tuner: Any) -> bool:
    """Run the tuner; True when Ctrl-C (or SIGTERM, turned into it) stopped it."""
    try:
        tuner.fit()
    except KeyboardInterrupt:
        return True
    return False


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
    best_latency: float | None = None  # the lowest (measured, else predicted) latency, ms
    started: float = field(default_factory=time.time)
    #: Epochs reported so far by each running trial (Tune trial id), and epochs a trial trains.
    epochs: dict[str, int] = field(default_factory=dict)
    epochs_per_trial: int | None = None

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
    """Tune callback keeping :class:`Progress` current and counting failures.

    ``tail = (samples, slots, on_tail)``: ``on_tail()`` is called once, when all ``samples``
    trials of the session exist and fewer than ``slots`` run or wait, i.e. a slot stays idle.
    """

    def __init__(
        self,
        progress: Progress,
        on_progress: Callable[[Progress], None] | None,
        failures: list[int],
        on_event: Callable[[str], None] | None = None,
        note_error: Callable[[str, str], None] | None = None,
        tail: tuple[int, int, Callable[[], None]] | None = None,
    ):
        self.progress = progress
        self.on_progress = on_progress
        self.failures = failures
        self.on_event = on_event
        self.note_error = note_error
        self._auth_hinted = False
        self.tail = tail

    def _update(self, trials: list[Any], ended: Any = None) -> None:
        """``ended``: the trial whose end is being reported (Tune still shows it RUNNING)."""
        self.progress.running = sum(t.status == "RUNNING" for t in trials if t is not ended)
        if self.on_progress:
            self.on_progress(self.progress)
        if self.tail is not None:
            samples, slots, on_tail = self.tail
            busy = sum(t.status in ("RUNNING", "PENDING") for t in trials if t is not ended)
            if len(trials) >= samples and busy < slots:
                self.tail = None
                on_tail()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._update(trials)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        """Every epoch a trial reports: the line ticks while trials run, not only when one ends."""
        epoch = result.get("epoch")
        if isinstance(epoch, int) and not result.get("final"):
            self.progress.epochs[trial.trial_id] = epoch
            self._update(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.epochs.pop(getattr(trial, "trial_id", None), None)
        p = self.progress
        result = trial.last_result or {}
        if result.get("error"):
            p.failed += 1
            self.failures[0] += 1
        elif result.get("final") and not result.get("infeasible"):
            p.done += 1
            for key, attr, better in (
                ("accuracy", "best_accuracy", max),
                ("rank", "best_rank", max),
                ("latency", "best_latency", min),
            ):
                value = result.get(key)
                if isinstance(value, float) and math.isfinite(value):
                    current = getattr(p, attr)
                    setattr(p, attr, value if current is None else better(current, value))
        else:
            p.pruned += 1
        self._update(trials, ended=trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.epochs.pop(getattr(trial, "trial_id", None), None)
        self.progress.failed += 1
        self.failures[0] += 1
        message = trial_error_message(trial)
        if self.note_error and message:
            self.note_error(trial.trial_id, message)
        if self.on_event and message and is_auth_error(message) and not self._auth_hinted:
            self._auth_hinted = True
            self.on_event(f"Ray refused a trial for authentication: {auth_hint()}")
        self._update(trials, ended=trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if self.on_event:
            message = trial_error_message(trial) or "its worker died"
            self.on_event(
                f"trial {trial.trial_id} is retried ({trial.num_failures} of --trial-retries "
                f"{trial.max_failures}): {message}"
            )


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
    if any(is_auth_error(line) for line in lines):
        return next(line for line in lines if is_auth_error(line))[:500]
    return lines[-1][:500]
