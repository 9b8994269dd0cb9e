"""The confirmation stage: seeded retrainings of a run's top configs and of every baseline.

A search ranks configs on one short training each, which cannot tell a real gain from seed
noise. ``confirm`` trains the top-K feasible searched configs (by ``--pick``, see
:meth:`RunResults.ranked <rexsearch.results.RunResults.ranked>`) and every baseline with S
fresh seeds (the run's seed + 1 ... + S, so the best config is not judged on the training it
was selected on), at the search's fidelity or more epochs, as Ray Tune trials of the same
worker (:func:`~rexsearch.search.trial.trial_function`) on the same per-trial resources.
Each training is one trial of the sibling study ``<study_name>-confirm`` in the run's storage
(the dashboard shows it), with user attributes naming the source trial, the seed and the
config hash. Rerunning skips the (config, seed, epochs) pairs already COMPLETE, so an
interrupted confirmation resumes where it stopped.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Callback

from rexsearch.confirmation import confirm_study
from rexsearch.errors import UserError
from rexsearch.results import RunResults, error_text
from rexsearch.rundir import RunInfo
from rexsearch.search.cluster import Resources, cluster_resources
from rexsearch.search.settings import SearchSettings
from rexsearch.search.study import fail_running

DEFAULT_TOP = 3
DEFAULT_SEEDS = 3


@dataclass(frozen=True)
class Target:
    """One config to confirm: a searched trial (``pick_rank`` 1 is the best) or a baseline."""

    source_trial: int
    label: str
    role: str  # "searched" or "baseline"
    pick_rank: int | None
    record: dict[str, Any]

    def attrs(self, seed: int, epochs: int) -> dict[str, Any]:
        keys = ("config", "config_hash", "macs", "params", "channels", "expand_layers")
        return {
            **{k: self.record[k] for k in keys if k in self.record},
            "source_trial": self.source_trial,
            "label": self.label,
            "role": self.role,
            "pick_rank": self.pick_rank,
            "seed": seed,
            "epochs": epochs,
            **({"baseline": self.label} if self.role == "baseline" else {}),
        }


def targets(results: RunResults, top: int, pick: str | None = None) -> list[Target]:
    """The top ``top`` distinct feasible searched configs by ``pick`` and every complete baseline."""
    if "accuracy" not in results.objectives:
        raise UserError(
            f"{results.run.path} is a rank-only run (no proxy training): there is no accuracy to confirm"
        )
    out = []
    for i, number in enumerate(results.ranked(pick)[:top], start=1):
        t = results.trial(number)
        out.append(Target(number, f"trial-{number}", "searched", i, dict(t.user_attrs)))
    seen = set()
    for t in results.trials:
        name = t.user_attrs.get("baseline")
        if name and name not in seen and t.state == TrialState.COMPLETE and "config" in t.user_attrs:
            seen.add(name)
            out.append(Target(t.number, name, "baseline", None, dict(t.user_attrs)))
    return out


def confirm_seeds(run_seed: int, seeds: int) -> list[int]:
    """Fresh seeds for ``seeds`` trainings: the run's seed + 1 ... + ``seeds``."""
    return [run_seed + 1 + i for i in range(seeds)]


def pending(study: Any, wanted: list[tuple[Target, int]], epochs: int) -> list[tuple[Target, int]]:
    """The (target, seed) pairs not yet COMPLETE at ``epochs`` in the confirmation study."""
    done = {
        (t.user_attrs.get("config_hash"), t.user_attrs.get("seed"), t.user_attrs.get("epochs"))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    return [(t, s) for t, s in wanted if (t.record.get("config_hash"), s, epochs) not in done]


@dataclass(frozen=True)
class ConfirmPlan:
    """What a confirmation session will train."""

    targets: tuple[Target, ...]
    seeds: tuple[int, ...]
    epochs: int
    todo: tuple[tuple[Target, int], ...]

    @property
    def total(self) -> int:
        return len(self.targets) * len(self.seeds)


def plan(
    results: RunResults,
    top: int = DEFAULT_TOP,
    seeds: int = DEFAULT_SEEDS,
    epochs: int | None = None,
    pick: str | None = None,
) -> ConfirmPlan:
    """Which configs and seeds to train (and which are already done); refuses a lower fidelity."""
    if top < 1 or seeds < 2:
        raise UserError(
            f"--top must be at least 1 and --seeds at least 2 (a spread needs two trainings), "
            f"got --top {top} --seeds {seeds}"
        )
    run_epochs = int(results.run.fidelity.get("epochs") or 0)
    epochs = epochs or run_epochs
    if epochs < run_epochs:
        raise UserError(
            f"--epochs {epochs} is below the search's {run_epochs}: confirm at the search's fidelity "
            "or a higher one"
        )
    chosen = targets(results, top, pick)
    seed_list = confirm_seeds(results.run.seed, seeds)
    study = confirm_study(results.run, create=False)
    wanted = [(t, s) for t in chosen for s in seed_list]
    todo = pending(study, wanted, epochs) if study is not None else wanted
    return ConfirmPlan(tuple(chosen), tuple(seed_list), epochs, tuple(todo))


class ConfirmRecorder(Callback):
    """Tune callback (driver side): one confirmation-study trial per Tune trial, told its outcome."""

    def __init__(self, study: Any, on_event: Callable[[str], None] | None = None) -> None:
        self.study = study
        self.on_event = on_event
        self.numbers: dict[str, int] = {}
        self.done = 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = self.study.ask()
        for key, value in trial.config["candidate"]["attrs"].items():
            t.set_user_attr(key, value)
        self.numbers[trial.trial_id] = t.number

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial.trial_id, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from rexsearch.search.tune import trial_error_message

        message = trial_error_message(trial) or "its worker died"
        self.finish(trial.trial_id, trial.last_result, f"the trial's worker died: {message}")

    def finish(self, trial_id: str, result: dict[str, Any] | None, error: str | None = None) -> None:
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        storage, result = self.study._storage, result or {}
        trial_db_id = self.study.trials[number]._trial_id
        for key in ("accuracy_curve", "train_seconds", "node"):
            if result.get(key) is not None:
                storage.set_trial_user_attr(trial_db_id, key, result[key])
        accuracy = result.get("accuracy")
        error = error or result.get("error")
        if error or not result.get("final") or not isinstance(accuracy, float) or not math.isfinite(accuracy):
            text = error or f"no final accuracy reported ({accuracy})"
            storage.set_trial_user_attr(trial_db_id, "error", error_text(text))
            self.study.tell(number, state=TrialState.FAIL)
        else:
            self.study.tell(number, accuracy)
        self.done += 1
        if self.on_event:
            attrs = self.study.trials[number].user_attrs
            what = f"accuracy {100 * accuracy:.2f}%" if not error else f"failed: {error}"
            self.on_event(f"confirmed {attrs.get('label')} seed {attrs.get('seed')}: {what}")


@dataclass(frozen=True)
class ConfirmOutcome:
    """What a confirmation session did."""

    run: RunInfo
    plan: ConfirmPlan
    trained: int
    seconds: float
    interrupted: bool


def estimate_line(
    results: RunResults, confirm_plan: ConfirmPlan, settings: SearchSettings, resources: Resources
) -> str:
    """How long the pending trainings take, from the search's own trainings (the median
    seconds of its complete trials, scaled to the confirmation's epochs) and the trainings
    that run at once."""
    import math

    from rexsearch.search.run import concurrent_trials

    table = results.table
    seconds = table.loc[table["state"] == "COMPLETE", "train_seconds"].dropna()
    search_epochs = int(results.run.fidelity.get("epochs") or 0)
    at_once = concurrent_trials(settings, resources)
    if seconds.empty or not search_epochs:
        return f"{len(confirm_plan.todo)} trainings to run, {at_once} at a time"
    each = float(seconds.median()) * confirm_plan.epochs / search_epochs
    total = each * math.ceil(len(confirm_plan.todo) / at_once)
    return (
        f"{len(confirm_plan.todo)} trainings to run, {at_once} at a time: about {total / 60:.0f} min "
        f"({each:.0f} s each, the median of the search's trainings scaled to {confirm_plan.epochs} epochs)"
    )


def execute_confirm(
    settings: SearchSettings,
    confirm_plan: ConfirmPlan,
    split: Any,
    on_event: Callable[[str], None] | None = None,
    resources: Resources | None = None,
    on_progress: Callable[[Any], None] | None = None,
) -> ConfirmOutcome:
    """Train the plan's pending pairs on Ray Tune (Ray initialised by the caller); ``on_progress``
    gets the same :class:`~rexsearch.search.tune.Progress` as a search's status line."""
    from ray import tune

    from rexsearch.rundir import load_run
    from rexsearch.search.run import check_same_data, proxy_classes, trial_job
    from rexsearch.search.trial import trial_function
    from rexsearch.search.tune import LiveView, Progress, fit, run_config, trainable

    run = load_run(settings.run_dir)
    check_same_data(run, getattr(split, "dataset", None))
    resources = resources or cluster_resources(settings)
    study = confirm_study(run, create=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy"])
    study.set_user_attr("seeds", list(confirm_plan.seeds))
    fail_running(study)  # trainings a dead driver left RUNNING: FAIL (interrupted), trained again
    start = time.monotonic()
    if not confirm_plan.todo:
        return ConfirmOutcome(run, confirm_plan, 0, 0.0, False)
    recorder = ConfirmRecorder(study, on_event)
    candidates = [
        {
            "config": t.record["config"],
            "macs": t.record["macs"],
            "params": t.record["params"],
            "number": t.source_trial,
            "seed": seed,
            "attrs": t.attrs(seed, confirm_plan.epochs),
        }
        for t, seed in confirm_plan.todo
    ]
    job = trial_job(settings, run, resources, proxy_classes(settings, split))
    job = replace(job, objectives=("accuracy",), epochs=confirm_plan.epochs)
    job = replace(job, keep_weights=False)

    fn = trainable(trial_function, split, job, resources)
    views = []
    if on_progress:
        progress = Progress(total=len(confirm_plan.todo), epochs_per_trial=confirm_plan.epochs)
        views.append(LiveView(progress, on_progress, [0]))
    tuner = tune.Tuner(
        fn,
        param_space={"candidate": tune.grid_search(candidates)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=settings.max_concurrent),
        run_config=run_config(settings, "confirm", [recorder, *views]),
    )
    interrupted = fit(tuner)
    # Tune's own SIGINT handler ends fit() normally after stopping the session: trainings it never
    # finished (running ones are left RUNNING, pending ones never started) mean an interruption
    interrupted = fail_running(study) > 0 or recorder.done < len(confirm_plan.todo) or interrupted
    return ConfirmOutcome(run, confirm_plan, recorder.done, time.monotonic() - start, interrupted)


def confirm(
    run_dir: str,
    top: int = DEFAULT_TOP,
    seeds: int = DEFAULT_SEEDS,
    epochs: int | None = None,
    pick: str | None = None,
    address: str | None = None,
    data_dir: str | None = None,
    split: Any = None,
    on_event: Callable[[str], None] | None = None,
    lock: Any = None,
    on_ray: Callable[[], None] | None = None,
    progress: Callable[[str, str, int, int], None] | None = None,
    on_progress: Callable[[Any], None] | None = None,
) -> ConfirmOutcome:
    """Plan and run the confirmation of ``run_dir`` (joining or starting Ray, loading the split when
    not given: the run's data set, refused when its content differs from what the run recorded;
    ``progress`` reports its download and decoding); Ray is shut down again only when this call
    started it.

    The run's lock (:class:`~rexsearch.rundir.RunLock`) is held from the plan to the end: ``lock``
    when the caller holds it already, else taken here (a live ``resume`` or another ``confirm``
    of the run refuses this one before it reads or writes anything). ``on_ray`` is called once
    Ray is up (a command installs its SIGTERM handler there, after Ray's own).
    """
    from rexsearch.rundir import RunLock, load_run

    run = load_run(run_dir)
    own = RunLock.acquire(run.path) if lock is None else None
    try:
        return _confirm(
            run, top, seeds, epochs, pick, address, data_dir, split, on_event, on_ray, progress, on_progress
        )
    finally:
        if own is not None:
            own.release()


def _confirm(
    run: Any,
    top: int,
    seeds: int,
    epochs: int | None,
    pick: str | None,
    address: str | None,
    data_dir: str | None,
    split: Any,
    on_event: Callable[[str], None] | None,
    on_ray: Callable[[], None] | None,
    progress: Callable[[str, str, int, int], None] | None,
    on_progress: Callable[[Any], None] | None = None,
) -> ConfirmOutcome:
    from rexsearch.search.cluster import ensure_ray
    from rexsearch.search.run import check_same_data, load_split
    from rexsearch.search.settings import settings_from_run

    confirm_plan = plan(RunResults.load(run), top, seeds, epochs, pick)
    settings = settings_from_run(run, address=address, data_dir=data_dir)
    if on_event:
        done = confirm_plan.total - len(confirm_plan.todo)
        on_event(
            f"confirmation: {len(confirm_plan.targets)} configs x {len(confirm_plan.seeds)} seeds "
            f"({', '.join(map(str, confirm_plan.seeds))}) at {confirm_plan.epochs} epochs; "
            f"{done} of {confirm_plan.total} trainings already done"
        )
    if not confirm_plan.todo:
        return ConfirmOutcome(run, confirm_plan, 0, 0.0, False)
    if split is None:
        split = load_split(settings, progress, run=run)
    else:
        check_same_data(run, getattr(split, "dataset", None))
    started = ensure_ray(settings.address)
    if on_ray:
        on_ray()
    try:
        resources = cluster_resources(settings)
        if on_event:
            on_event(estimate_line(RunResults.load(run), confirm_plan, settings, resources))
        return execute_confirm(settings, confirm_plan, split, on_event, resources, on_progress)
    finally:
        if started:
            import ray

            ray.shutdown()
