"""`rexsearch run`, `rexsearch resume` and `rexsearch space`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from rexsearch.cli import command_help
from rexsearch.cli.common import (
    Termination,
    add_budget_flags,
    add_dataset_flags,
    bounded_int,
    budget_from_args,
    data_progress,
    feasible_budget,
    none_completed,
    positive_int,
    print_table,
)
from rexsearch.cli.status import StatusLine, duration_text
from rexsearch.cost import format_count
from rexsearch.datasets import DEFAULT_DATASET
from rexsearch.errors import UserError
from rexsearch.results import DEFAULT_OBJECTIVES, DEFAULT_RANK_PROTOCOL, RANK_PROTOCOLS
from rexsearch.space import Budget, load_space, shipped_space_names

#: The largest batch the CPU speed probe trains (its images/s barely change above it), and its
#: timings: one warm-up step, then the median of three one-step timings (about 2 s for
#: rexnet-1.0's proxy at batch 128 on 2 cores; the ETA then follows the measured trials).
PROBE_BATCH = 256
PROBE_STEPS, PROBE_REPEATS = 1, 3


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _duration_arg(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``45m`` or ``2h`` (an argparse type)."""
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1].lower()) if text and text[-1].lower() in scale else (text, "s")
    try:
        value = float(number) * scale[unit]
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < 1e9):
        raise argparse.ArgumentTypeError(f"expected a duration such as 3600, 90m or 2h, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    shipped = ", ".join(shipped_space_names())
    p = sub.add_parser(
        "run",
        help=command_help("run"),
        description="Search channel configurations inside a MACs budget (conv+linear multiply-"
        "accumulates at --resolution, batch 1) and/or a latency budget predicted by a latency table "
        "of this machine. Trials train proxies on a data set (--dataset, CIFAR-100 by default) on Ray "
        "Tune; Optuna maximises proxy accuracy (and, if asked, feature rank; it may minimise latency). "
        "Writes a run directory (run.json, study.db, ray/, trials.csv, report.html).",
    )
    add_budget_flags(p)
    p.add_argument("--space", default="rexnet", help=f"space name ({shipped}) or YAML file (default rexnet)")
    p.add_argument(
        "--objectives",
        default=",".join(DEFAULT_OBJECTIVES),
        help="comma-separated: accuracy, rank, latency (minimised; needs --latency-budget) "
        "(default accuracy: rank is recorded for every trial, but in a Fashion-MNIST study it ranked "
        "networks no better than params beyond noise; without accuracy no data is needed)",
    )
    p.add_argument("--sampler", default="tpe", help="tpe, nsga2, gp or random (default tpe)")
    p.add_argument("--trials", type=positive_int, default=64, help="trials to finish (default 64)")
    p.add_argument("--epochs", type=positive_int, default=30, help="proxy epochs per trial (default 30)")
    p.add_argument("--train-images", type=positive_int, help="class-stratified training subset (default all)")
    p.add_argument(
        "--val-images",
        type=positive_int,
        help="held-out training images for selection (default 5000; --dataset folder: its val/ images, "
        "else a tenth of its images, at most 5000)",
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--seed", type=int, default=0, help="seeds the sampler, data split and trainings")
    p.add_argument("--run-dir", help="run directory (default runs/run-<time>)")
    add_dataset_flags(p)
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///RUN_DIR/study.db)")
    p.add_argument("--study-name", default="rexsearch")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument(
        "--storage-path",
        help="Ray Tune's experiment folder (default RUN_DIR/ray); on a cluster of several nodes, "
        "shared storage: an NFS path mounted on every node, or s3://...",
    )
    p.add_argument("--cpus-per-trial", type=_float)
    p.add_argument("--gpus-per-trial", type=_float, help="may be fractional, e.g. 0.25")
    p.add_argument("--max-concurrent", type=positive_int)
    p.add_argument("--max-failures", type=positive_int, default=10, help="stop after this many failed trials")
    p.add_argument(
        "--time-budget",
        type=_duration_arg,
        metavar="TIME",
        help="launch no further trial once this much time has passed (e.g. 45m, 2h, 3600); running "
        "trials finish, and `rexsearch resume` continues the run",
    )
    p.add_argument(
        "--trial-timeout",
        type=_float,
        metavar="SECONDS",
        help="a trial running longer is stopped and recorded FAIL (checked at every training step)",
    )
    p.add_argument(
        "--trial-retries",
        type=int,
        default=2,
        help="reruns of a trial whose worker or node died (default 2); its own errors are not retried",
    )
    p.add_argument("--keep-weights", action="store_true", help="keep every trial's proxy weights")
    p.add_argument(
        "--rank-protocol",
        choices=tuple(RANK_PROTOCOLS),
        default=DEFAULT_RANK_PROTOCOL,
        help="how the rank objective is measured (as `rexsearch rank --protocol`; "
        f"default {DEFAULT_RANK_PROTOCOL})",
    )
    p.add_argument(
        "--confirm",
        type=bounded_int(1, 100),
        metavar="K",
        help="after the search, retrain the top K configs and every baseline with --confirm-seeds "
        "seeds (as `rexsearch confirm RUN_DIR --top K`)",
    )
    p.add_argument(
        "--confirm-seeds", type=bounded_int(1, 100), default=3, metavar="S", help="default 3, at most 100"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no live progress view")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser(
        "resume",
        help=command_help("resume"),
        description="Continue a run after Ctrl-C, a crash or kill -9: finished trials are "
        "kept, trials left running are marked FAIL and run again.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--storage-path", help="Ray Tune's experiment folder (default: the run's)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the run's data set is now (default: where the run found it); it must be the same "
        "data set, unchanged",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser(
        "space",
        help=command_help("space"),
        description="Sample a search space under a MACs budget (every candidate lands in [0.97 B, B]) "
        "and/or a predicted latency budget, widths optionally rounded to a multiple (--channel-multiple).",
    )
    p.add_argument("space", metavar="SPACE", help=f"space name ({shipped}) or YAML file")
    add_budget_flags(p)
    p.add_argument("--sample", type=positive_int, default=5, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="JSON lines, one candidate each")
    p.set_defaults(handler=cmd_space)


def cmd_space(args: argparse.Namespace) -> int:
    """`rexsearch space` (and `latency-table preview`): candidates under the budget flags."""
    budget = budget_from_args(args)
    space = load_space(args.space)
    budget, _ = feasible_budget(args, budget, space, args.seed, lambda line: print(line, file=sys.stderr))
    candidates = space.sample(budget, args.sample, seed=args.seed)
    if args.json:
        for c in candidates:
            print(json.dumps(c.to_dict()))
        return 0
    limits = [] if budget.macs is None else [f"in [{budget.lower:,}, {budget.macs:,}] MACs"]
    if budget.params is not None:
        limits.append(f"under {budget.params:,} params")
    if budget.latency_ms is not None:
        margin = f" less {budget.latency_margin:.0%}" if budget.latency_margin else ""
        limits.append(f"under {budget.latency_ms:g} ms{margin} predicted")
    if budget.channel_multiple:
        limits.append(f"widths multiples of {budget.channel_multiple}")
    print(
        f"{space.name}: {len(candidates)} candidates {', '.join(limits)} "
        f"at {budget.resolution}x{budget.resolution}"
    )
    latency = budget.latency_ms is not None
    rows = [
        [
            i,
            f"{c.cost.macs:,}",
            f"{c.cost.params:,}",
            *([f"{c.latency_ms:.2f}"] if latency else []),
            c.config.depth,
            c.config.expand_layers,
            c.config.activation,
            " ".join(map(str, c.config.out_channels)),
        ]
        for i, c in enumerate(candidates)
    ]
    headers = ["#", "MACs", "params", *(["predicted ms"] if latency else []), "depth", "expand", "act"]
    print_table([*headers, "channels"], rows)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        if not args.run_dir:
            raise UserError("--resume needs --run-dir RUN_DIR (or use `rexsearch resume RUN_DIR`)")
        return _resume(args.run_dir, args.address, args.data_dir, args.quiet, args.storage_path, args.dataset)
    from rexsearch.search import SearchSettings

    dataset = DEFAULT_DATASET if args.dataset is None else args.dataset

    budget = budget_from_args(args)
    _check_latency_table(budget, args.latency_table)
    run_dir = args.run_dir or str(Path("runs") / time.strftime("run-%Y%m%d-%H%M%S"))
    settings = SearchSettings(
        run_dir=run_dir,
        flops_budget=budget.macs,
        params_budget=budget.params,
        resolution=budget.resolution,
        space=args.space,
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        sampler=args.sampler,
        trials=args.trials,
        epochs=args.epochs,
        train_images=args.train_images,
        val_images=args.val_images if args.val_images or dataset == "folder" else 5000,
        batch_size=args.batch_size,
        seed=args.seed,
        data_dir=args.data_dir,
        dataset=dataset,
        storage=args.storage,
        study_name=args.study_name,
        address=args.address,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        storage_path=args.storage_path,
        trial_timeout=args.trial_timeout,
        time_budget=args.time_budget,
        trial_retries=args.trial_retries,
        keep_weights=args.keep_weights,
        rank_protocol=args.rank_protocol,
        latency_budget_ms=budget.latency_ms,
        latency_table=str(Path(args.latency_table).resolve()) if args.latency_table else None,
        latency_margin=budget.latency_margin,
        channel_multiple=budget.channel_multiple,
    )
    settings.validate()
    from rexsearch.search.settings import check_new_run_dir
    from rexsearch.storage import check_storage

    check_new_run_dir(Path(settings.run_dir))  # a bad --run-dir stops here, before data, timing or Ray

    check_storage(settings.storage_url())  # an unusable --storage stops here, before any timing too
    space = load_space(settings.space)
    view = StatusLine(args.quiet)
    budget, measured = feasible_budget(args, budget, space, settings.seed, view.event)
    say_drift(budget, view)
    settings = SearchSettings(
        **{
            **settings.to_dict(),
            "space": space.path,
            "objectives": settings.objectives,
            "latency_margin": budget.latency_margin,
            "latency_margin_ratios": measured.ratios if measured else (),
        }
    )
    confirm = (args.confirm, args.confirm_seeds) if args.confirm else None
    return execute_run(settings, view, new_run=True, argv=["rexsearch", *sys.argv[1:]], confirm=confirm)


def _check_latency_table(budget: Budget, path: str | Path | None) -> None:
    """A run measures latency here: refuse a table from another device or runtime before Ray starts."""
    if budget.latency_table is not None:
        from rexsearch.latency import check_table_here

        check_table_here(budget.latency_table, f"the latency table {path}")


#: Calibration networks a run with a latency budget times again before Ray starts (a few seconds).
RUN_DRIFT_NETWORKS = 3


def say_drift(budget: Budget, view: StatusLine) -> None:
    """Say how much faster or slower this machine runs than when the latency table was built."""
    table = budget.latency_table
    if table is None or view.quiet or not any("config" in r for r in table.correction.calibration):
        return
    from rexsearch.latency import check_drift

    view.event(f"latency table: {check_drift(table, RUN_DRIFT_NETWORKS).describe()}")


def cmd_resume(args: argparse.Namespace) -> int:
    return _resume(args.run_dir, args.address, args.data_dir, args.quiet, args.storage_path)


def _resume(
    run_dir: str,
    address: str | None,
    data_dir: str | None,
    quiet: bool,
    storage_path: str | None = None,
    dataset: str | None = None,
) -> int:
    import optuna

    from rexsearch.rundir import RunLock, load_run
    from rexsearch.search import check_resumable, settings_from_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = load_run(run_dir)
    settings = settings_from_run(run, address=address, data_dir=data_dir, storage_path=storage_path)
    if dataset is not None and dataset != settings.dataset:
        raise UserError(
            f"the run {run.path} was searched on {settings.dataset}, not {dataset}; resume it without "
            "--dataset, or start a new run"
        )
    _check_latency_table(settings.budget, settings.latency_table_path())
    check_resumable(run)  # read only: a missing, renamed or empty study writes nothing, not even the lock
    lock = RunLock.acquire(run.path)  # a second driver of this run stops here, before anything is written
    try:
        return execute_run(settings, StatusLine(quiet), new_run=False, argv=[], lock=lock)
    finally:
        lock.release()


def execute_run(
    settings,
    view: StatusLine,
    new_run: bool,
    argv: list[str],
    lock=None,
    confirm: tuple[int, int] | None = None,
) -> int:
    from rexsearch.search.cluster import worker_env

    os.environ.update(worker_env())  # before torch loads here: the speed probe and local workers
    import optuna

    from rexsearch import search
    from rexsearch.storage import check_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    check_storage(settings.storage_url())  # an unusable --storage stops here: before data, Ray and run.json
    if settings.needs_data:
        _check_trial_memory(settings)
    split = None
    if settings.needs_data:  # a missing, damaged or other data set stops here: before Ray and run.json
        from rexsearch.rundir import load_run

        run = None if new_run else load_run(settings.run_dir)
        split = search.load_split(settings, data_progress(view.quiet), run)
    termination = Termination()
    started = search.ensure_ray(settings.address)
    termination.install()
    own_lock = None
    confirmed = None
    try:
        resources = search.cluster_resources(settings)
        if settings.needs_data and not resources.gpus:  # may refuse a multi-day run: before run.json
            _cpu_note(settings, split, view, resources, asked_for=_fidelity_given(argv) or not new_run)
        if new_run:
            lock = own_lock = search.begin_run(settings, argv, split.dataset if split is not None else None)
        view.event(
            f"run directory: {settings.run_dir}  (Ray: {resources.cpus:g} CPU, "
            f"{resources.gpus:g} GPU, {resources.nodes} node(s); {resources.cpus_per_trial:g} CPU and "
            f"{resources.gpus_per_trial:g} GPU per trial)"
        )
        if split is not None:
            from rexsearch.datasets import describe

            view.event(f"data set: {describe(split.dataset)}")
        try:
            outcome = search.execute(
                settings,
                split,
                on_progress=view,
                on_event=view.event,
                resources=resources,
                lock=lock,
                on_tail=_prewarm_report,
            )
        finally:
            view.end()
        if confirm and not outcome.interrupted and not outcome.stopped_by_failures:
            from rexsearch.search.confirm import confirm as run_confirm

            top, seeds = confirm
            confirmed = run_confirm(
                settings.run_dir,
                top,
                seeds,
                address=settings.address,
                split=split,
                on_event=view.event,
                lock=lock,
                on_progress=view,
            )
            view.end()
        # the report is written while Ray shuts down (which mostly waits for its processes)
        report = Background(lambda: _write_report(outcome, settings))
    except BaseException:
        if own_lock is not None:
            own_lock.release()
        raise
    finally:
        if started:
            import ray

            ray.shutdown()
    try:
        results, report_line = report.result()  # under the run's lock: the report is the run's
    finally:
        if own_lock is not None:
            own_lock.release()
    _finish(outcome, settings, results, report_line)
    if outcome.interrupted:
        print(
            f"stopped with {outcome.finished}/{outcome.target} trials finished; continue with "
            f"`rexsearch resume {settings.run_dir}`",
            file=sys.stderr,
        )
        return termination.exit_code
    if outcome.stopped_by_time:
        print(
            f"the --time-budget is spent: {outcome.finished} of {outcome.target} trials finished; continue "
            f"with `rexsearch resume {settings.run_dir}`",
            file=sys.stderr,
        )
    if outcome.stopped_by_failures:
        print(
            f"stopped after {settings.max_failures} failed trials (--max-failures); see trials.csv "
            "for their errors",
            file=sys.stderr,
        )
        return 1
    if confirmed is not None and confirmed.interrupted:  # the same words and code as `confirm`
        print(
            f"interrupted after {confirmed.trained} of {len(confirmed.plan.todo)} confirmation trainings: "
            f"the verdict above is incomplete; continue with `rexsearch confirm {settings.run_dir}`",
            file=sys.stderr,
        )
        return termination.exit_code
    if confirmed is not None and confirmed.trained:
        failure = none_completed(results.confirmation.table, "confirmation training")
        if failure:
            print(f"rexsearch: {failure}", file=sys.stderr)
            return 1
    table = results.table
    failure = none_completed(table, "trial") or none_completed(
        table[table["baseline"] == ""], "searched trial"
    )
    if failure:
        print(f"rexsearch: {failure}; see trials.csv", file=sys.stderr)
        return 1
    return 0


def _check_trial_memory(settings) -> None:
    """Refuse, before Ray starts, a budget or batch whose proxies cannot train in this machine's
    memory: the baselines at the budget stand for the candidates, which all sit just under it."""
    from rexsearch.cost import check_memory
    from rexsearch.proxy import PROXY_RESOLUTION, proxy_config
    from rexsearch.space import BASELINES, InfeasibleError, baseline_candidate

    for name in BASELINES:
        try:
            config = baseline_candidate(name, settings.budget).config
        except InfeasibleError:
            continue
        check_memory(
            proxy_config(config),
            PROXY_RESOLUTION,
            settings.batch_size,
            purpose=f"train the proxies of this budget ({name} at it) at --batch-size {settings.batch_size}",
            training=True,
        )


#: Flags that set how long a run takes: given any, the user chose the run's length.
FIDELITY_FLAGS = ("--trials", "--epochs", "--train-images", "--time-budget")
#: A run estimated longer than this on CPUs alone, with none of :data:`FIDELITY_FLAGS`, is asked
#: about on a terminal and refused elsewhere (with a command that fits a first look).
MAX_UNASKED_S = 24 * 3600
#: The first look suggested instead: its proxies learned in reports/fashion-mnist (3 epochs x 5,000).
FIRST_LOOK = {"trials": 16, "epochs": 3, "train_images": 5000}


def _fidelity_given(argv: list[str]) -> bool:
    return any(a == f or a.startswith(f + "=") for a in argv for f in FIDELITY_FLAGS)


def _cpu_note(settings, split, view: StatusLine, resources, asked_for: bool = True) -> None:
    import torch

    from rexsearch.search import concurrent_trials, estimate_training_seconds
    from rexsearch.space import InfeasibleError, baseline_candidate
    from rexsearch.train import measure_throughput

    try:
        base = baseline_candidate("rexnet-linear", settings.budget).config
    except InfeasibleError:
        return
    # the trainer's batch (at most the training split), capped: images/s hardly changes above it;
    # timed on as many threads as a trial gets, then shared among the trials that run at once
    batch = max(2, min(settings.batch_size, len(split.train_y), PROBE_BATCH))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(resources.cpus_per_trial)))
    try:
        ips = measure_throughput(
            base, batch, steps=PROBE_STEPS, repeats=PROBE_REPEATS, num_classes=split.num_classes
        )
    finally:
        torch.set_num_threads(threads)
    at_once = concurrent_trials(settings, resources)
    seconds = estimate_training_seconds(settings, split, ips, at_once)
    first = replace(settings, **FIRST_LOOK)
    images = min(FIRST_LOOK["train_images"], len(split.train_y))
    look = SimpleNamespace(train_y=range(images), val_y=split.val_y)
    quick = estimate_training_seconds(first, look, ips, at_once)
    flags = f"--trials {first.trials} --epochs {first.epochs} --train-images {first.train_images}"
    view.event(
        f"no GPU: the baseline proxy trains at about {ips:.0f} images/s per trial here "
        f"({resources.cpus_per_trial:g} CPU each, {at_once} at a time), so {settings.trials} trials x "
        f"{settings.epochs} epochs on {len(split.train_y):,} training images would take about "
        f"{duration_text(seconds)} (before early stopping); {flags} would take about {duration_text(quick)}"
    )
    if asked_for or seconds <= MAX_UNASKED_S:
        return
    suggestion = f"rexsearch run ... {flags} (or --time-budget 1h)"
    if sys.stdin.isatty() and sys.stderr.isatty():
        answer = input(f"Start a run of about {duration_text(seconds)}? [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            return
        raise UserError(f"not started; for a first look: {suggestion}")
    raise UserError(
        f"the defaults would take about {duration_text(seconds)} on this machine's CPUs; give the run's "
        f"length with {', '.join(FIDELITY_FLAGS)}, e.g. {suggestion}, about {duration_text(quick)}"
    )


def _prewarm_report() -> None:
    """Import the report's libraries on an idle CPU while the last trials run."""
    from rexsearch.report import prewarm

    threading.Thread(target=prewarm, name="rexsearch-report-prewarm", daemon=True).start()


class Background:
    """``fn()`` in a thread; :meth:`result` waits for it and re-raises what it raised."""

    def __init__(self, fn) -> None:
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="rexsearch-report", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _write_report(outcome, settings):
    """The run's results and the report line (the report's failure is said, not raised)."""
    from rexsearch.results import RunResults
    from rexsearch.storage import open_storage

    # the session's own storage URL: run.json's has no password (it comes from the environment)
    results = RunResults.load(outcome.run, outcome.run.open_study(open_storage(settings.storage_url())))
    try:
        from rexsearch.report import make_report

        files = make_report(results)
        report_line = f"verdict: {files.verdict}\nreport: {files.html}"
    except Exception as exc:  # the run's results are safe in the study; say why the report is missing
        report_line = (
            f"report could not be written ({type(exc).__name__}: {exc}); retry with rexsearch report"
        )
    return results, report_line


def _finish(outcome, settings, results, report_line: str) -> None:
    print_front(results)
    print(report_line)
    run_dir = settings.run_dir
    print(f"dashboard: rexsearch dashboard {run_dir}")
    print(f"report:    rexsearch report {run_dir}")
    print(f"export:    rexsearch export {run_dir} --trial best --out exported-model")


def print_front(results) -> None:
    """The run's feasible Pareto front as a table (:attr:`RunResults.front`)."""
    from rexsearch.results import METRICS

    front = results.front
    names = list(results.objectives)
    if results.budget.latency_ms is not None and "latency" not in names:
        names.append("latency")
    res = results.budget.resolution
    on = f" on {results.run.dataset_title}" if results.run.dataset_title else ""  # rank only: no data set
    print(f"Pareto front{on} ({len(front)} trials; MACs = conv+linear multiply-accumulates at {res}x{res}):")
    if front.empty:
        return
    print_table(
        ["trial", "MACs", "params", *names, "expand layers", "nonlinearity", "baseline"],
        [
            [
                r["number"],
                format_count(r["macs"]),
                format_count(r["params"]),
                *[METRICS[n].format(r[n]) for n in names],
                r["expand_layers"],
                r["nonlinearity"],
                r["baseline"] or "-",
            ]
            for _, r in front.iterrows()
        ],
    )
