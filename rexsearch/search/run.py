"""Running (or continuing) a search session until ``--trials`` trials have finished.

Resume does not depend on Tune's periodic experiment snapshot: the study in storage is
the source of truth. On resume, trials left RUNNING by a dead driver are marked FAIL
(``interrupted``), every interrupted trial is enqueued again with its parameters, and
the new session runs exactly the trials still missing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rexsearch.errors import UserError
from rexsearch.results import directions
from rexsearch.rundir import RunInfo, RunLock, load_run
from rexsearch.search.cluster import Resources, cluster_resources
from rexsearch.search.settings import SearchSettings
from rexsearch.search.study import (
    TrialDecoder,
    count_finished,
    enqueue_baselines,
    fail_running,
    make_sampler,
    open_study,
    prepare_resume,
    session_seed,
)
from rexsearch.search.trial import TrialJob, trial_function
from rexsearch.search.tune import (
    FailureStopper,
    LiveView,
    Progress,
    RecordingASHA,
    StudySearcher,
    fit,
    run_config,
    trainable,
)
from rexsearch.space import load_space
from rexsearch.storage import open_storage


@dataclass
class SearchOutcome:
    """What a finished (or interrupted) session produced."""

    run: RunInfo
    finished: int
    target: int
    interrupted: bool
    stopped_by_failures: bool
    resume_counts: dict[str, int] = field(default_factory=dict)
    stopped_by_time: bool = False  # --time-budget spent: no further trial was launched


def load_split(
    settings: SearchSettings,
    progress: Callable[[str, str, int, int], None] | None = None,
    run: RunInfo | None = None,
) -> Any:
    """The search split of the run's data set (``--dataset``) for the accuracy objective.

    With ``run`` (resume, confirm), the data must be the data set the run recorded (same name
    and content digest): another one is refused before anything trains.
    """
    from rexsearch.datasets import load_dataset, search_split

    data = load_dataset(settings.dataset, settings.data_dir, progress=progress)
    split = search_split(
        data, val_images=settings.val_images, train_images=settings.train_images, seed=settings.seed
    )
    if run is not None:
        check_same_data(run, split.dataset)
    return split


def check_same_data(run: RunInfo, identity: dict[str, Any] | None) -> None:
    """Refuse data other than what ``run`` recorded (run.json's ``data``) in one line."""
    from rexsearch.datasets import mismatch

    diff = mismatch(run.dataset, identity)
    if diff:
        raise UserError(
            f"the run {run.path} was searched on {diff}; give it the data it was searched on "
            "(the same --data-dir, unchanged), or start a new run"
        )


def proxy_classes(settings: SearchSettings, split: Any) -> int:
    """The proxy's classifier width: the loaded data set's classes, else the named set's."""
    if split is not None:
        return int(split.num_classes)
    return settings.proxy_classes or 100


def concurrent_trials(settings: SearchSettings, resources: Resources) -> int:
    """How many trials run at once: the cluster's slots for the per-trial request, at most
    ``--max-concurrent``."""
    slots = resources.slots
    return max(1, min(slots, settings.max_concurrent) if settings.max_concurrent else slots)


def estimate_training_seconds(
    settings: SearchSettings, split: Any, images_per_s: float, concurrent: int = 1
) -> float:
    """Wall time of the run's trainings at ``images_per_s`` (one trial's throughput on its own
    CPUs), ``concurrent`` trials at a time, on the split the trials will train on (its real
    size: a small data set or ``--train-images`` is counted as it is)."""
    from rexsearch.train import estimate_seconds

    one = estimate_seconds(1, settings.epochs, len(split.train_y), len(split.val_y), images_per_s)
    return one * math.ceil(settings.trials / max(1, concurrent))  # rounds of trials side by side


def trial_job(settings: SearchSettings, run: RunInfo, resources: Resources, num_classes: int) -> TrialJob:
    """The settings every trial of this session shares (``num_classes``: the proxy's head)."""
    return TrialJob(
        num_classes=num_classes,
        objectives=tuple(settings.objectives),
        resolution=settings.resolution,
        seed=settings.seed,
        threads=max(1, int(resources.cpus_per_trial)),
        trial_timeout=settings.trial_timeout,
        rank_samples=settings.rank_samples,
        rank_protocol=settings.rank_protocol,
        run_dir=str(run.path),
        keep_weights=settings.keep_weights,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        latency_environment=(
            settings.budget.latency_table.environment.to_dict() if settings.budget.latency_table else None
        ),
    )


def execute(
    settings: SearchSettings,
    split: Any = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[str], None] | None = None,
    trainable_fn: Callable[..., None] | None = None,
    resources: Resources | None = None,
    lock: RunLock | None = None,
    on_tail: Callable[[], None] | None = None,
) -> SearchOutcome:
    """Run (or continue) the search of ``settings.run_dir`` until ``--trials`` trials finished.

    Ray must be initialised (see :func:`~rexsearch.search.cluster.ensure_ray`); ``split`` is
    the training/validation data for the accuracy objective (shared with trials through Ray's
    object store). ``resources``: the checked per-trial request (checked here when omitted).
    ``lock``: the run's :class:`~rexsearch.rundir.RunLock` when the caller holds it already;
    otherwise it is taken here (a second driver of the run is refused) and released at the end.
    ``trainable_fn`` replaces :func:`~rexsearch.search.trial.trial_function` (benchmarks of
    the orchestration, fault tests). ``on_tail()`` is called once when the session's last trials
    run and a trial slot stays idle (the CLI imports the report's libraries then).
    """
    run = load_run(settings.run_dir)
    if split is not None:
        check_same_data(run, getattr(split, "dataset", None))
    own = RunLock.acquire(run.path) if lock is None else None
    try:
        return _execute(settings, run, split, on_progress, on_event, trainable_fn, resources, on_tail)
    finally:
        if own is not None:
            own.release()


def _execute(
    settings: SearchSettings,
    run: RunInfo,
    split: Any,
    on_progress: Callable[[Progress], None] | None,
    on_event: Callable[[str], None] | None,
    trainable_fn: Callable[..., None] | None,
    resources: Resources | None,
    on_tail: Callable[[], None] | None = None,
) -> SearchOutcome:
    from ray import tune

    space = load_space(run.data["space"]["path"])
    budget = settings.budget
    resources = resources or cluster_resources(settings)
    storage = open_storage(settings.storage_url())
    study = open_study(settings, storage)
    seed = session_seed(settings.seed, len(study.get_trials(deepcopy=False)))
    counts = prepare_resume(study)
    added = enqueue_baselines(study, budget)
    if on_event and added:
        on_event(f"baselines enqueued: {', '.join(added)}")
    target = settings.trials
    remaining = target - counts["finished"]
    if remaining <= 0:
        return SearchOutcome(run, counts["finished"], target, False, False, counts)
    deadline = time.monotonic() + settings.time_budget if settings.time_budget else None

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
    single = len(settings.objectives) == 1
    modes = ["max" if d == "maximize" else "min" for d in directions(settings.objectives)]
    num_classes = proxy_classes(settings, split)
    searcher = StudySearcher(
        TrialDecoder(space, budget, num_classes),
        metric=settings.objectives[0] if single else list(settings.objectives),
        mode=modes[0] if single else modes,
        sampler=make_sampler(settings.sampler, seed, len(settings.objectives)),
        study_name=settings.study_name,
        storage=storage,
        objectives=settings.objectives,
        budget=budget,
        pruned_ids=pruned_ids,
        deadline=deadline,
    )
    job = trial_job(settings, run, resources, num_classes)
    fn = trainable(trainable_fn or trial_function, split, job, resources)
    progress = Progress(
        total=target,
        done=counts["finished"],
        epochs_per_trial=settings.epochs if settings.needs_data else None,
    )
    slots = min(settings.max_concurrent or resources.slots, resources.slots)
    tail = (remaining, slots, on_tail) if on_tail else None
    failures = [0]
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=settings.max_concurrent,
            reuse_actors=True,
        ),
        run_config=run_config(
            settings,
            "session",
            [
                LiveView(
                    progress,
                    on_progress,
                    failures,
                    on_event,
                    searcher.note_error,
                    tail=tail,
                )
            ],
            stop=FailureStopper(settings.max_failures, failures),
        ),
    )
    interrupted = fit(tuner)
    searcher.flush_errors()
    finished = count_finished(study)
    stopped_by_time = deadline is not None and time.monotonic() >= deadline and finished < target
    if finished < target and failures[0] < settings.max_failures and not stopped_by_time:
        interrupted = True
    fail_running(study)
    stopped = failures[0] >= settings.max_failures
    return SearchOutcome(
        run, finished, target, interrupted, stopped, counts, stopped_by_time and not interrupted
    )
