"""`rexsearch confirm`: seeded retrainings of a run's top configs and baselines, and the verdict."""

from __future__ import annotations

import argparse
import sys

from rexsearch.cli import command_help
from rexsearch.cli.common import Termination, bounded_int, none_completed, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "confirm",
        help=command_help("confirm"),
        description="Retrain the top-K feasible configs of a run (by --pick) and every baseline with S "
        "fresh seeds on Ray, recorded in the sibling study <study_name>-confirm of the run's storage; "
        "then rewrite the report, whose verdict states each difference with its 95%% confidence "
        "interval. Pairs already trained are skipped, so an interrupted confirmation resumes.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--top",
        type=bounded_int(1, 100),
        default=3,
        metavar="K",
        help="searched configs (default 3, at most 100)",
    )
    p.add_argument(
        "--seeds",
        type=bounded_int(1, 100),
        default=3,
        metavar="S",
        help="seeds per config (default 3, at most 100)",
    )
    p.add_argument(
        "--epochs", type=bounded_int(1, 100_000), metavar="E", help="epochs (default: the search's)"
    )
    p.add_argument("--pick", help="accuracy, rank or balanced: how the top configs are chosen")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where the run's data set is now (default: where the run found it); it must be the data set "
        "the run was searched on, unchanged",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_confirm)


def run_confirmation(run_dir: str, top: int, seeds: int, epochs: int | None, pick: str | None, **kw) -> int:
    """Confirm, rewrite the report, print the confirmed configs and the verdict (exit code)."""
    import optuna

    from rexsearch.report import make_report
    from rexsearch.results import RunResults
    from rexsearch.rundir import RunLock, load_run
    from rexsearch.search.confirm import confirm

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    from rexsearch.cli.common import data_progress

    quiet = kw.pop("quiet", False)
    # the run's lock from the plan to the rewritten report: beside a live resume or another
    # confirm of the run this one is refused before it reads or writes anything
    from rexsearch.cli.status import StatusLine

    termination = Termination()
    status = StatusLine(quiet)
    with RunLock.acquire(load_run(run_dir).path) as lock:
        outcome = confirm(
            run_dir,
            top,
            seeds,
            epochs,
            pick,
            on_event=status.event,
            on_progress=status,
            lock=lock,
            on_ray=termination.install,
            progress=data_progress(quiet),
            **kw,
        )
        status.end()
        results = RunResults.load(outcome.run)
        files = make_report(results)
    print_confirmation(results)
    print(f"verdict: {files.verdict}")
    print(f"report: {files.html}")
    if outcome.trained:
        print(f"confirmation: {outcome.trained} trainings in {outcome.seconds:.0f} s")
    if outcome.interrupted:
        print(
            f"interrupted after {outcome.trained} of {len(outcome.plan.todo)} trainings: the verdict above "
            f"is incomplete; continue with `rexsearch confirm {run_dir}`",
            file=sys.stderr,
        )
        return termination.exit_code
    failure = none_completed(results.confirmation.table, "confirmation training") if outcome.trained else None
    if failure:
        print(f"rexsearch: {failure}", file=sys.stderr)
        return 1
    return 0


def print_confirmation(results) -> None:
    """Mean ± standard deviation per confirmed config."""
    from rexsearch.results import METRICS

    summary = results.confirmation.summary
    if summary.empty:
        print("no confirmation training completed")
        return
    m = METRICS["accuracy"]
    print(
        f"Confirmed proxy accuracy on {results.run.dataset_title} ({int(summary['epochs'].max())} epochs, "
        "mean ± sample std over seeds):"
    )
    print_table(
        ["config", "kind", "seeds", "mean", "std"],
        [
            [r.label, r.role, r.n, m.format(r.mean), "n/a" if r.n < 2 else f"{100 * r.std:.2f} points"]
            for r in summary.itertuples()
        ],
    )


def cmd_confirm(args: argparse.Namespace) -> int:
    return run_confirmation(
        args.run_dir,
        args.top,
        args.seeds,
        args.epochs,
        args.pick,
        address=args.address,
        data_dir=args.data_dir,
        quiet=args.quiet,
    )
