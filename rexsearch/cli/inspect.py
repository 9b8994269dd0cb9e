"""`rexsearch dashboard`, `rexsearch report` and `rexsearch export`."""

from __future__ import annotations

import argparse
import sys

from rexsearch.cli import command_help
from rexsearch.cli.common import SEED
from rexsearch.cost import macs_convention
from rexsearch.errors import UserError
from rexsearch.export import FORMATS, WEIGHTS, export_preset, export_trial
from rexsearch.layouts import LAYOUTS
from rexsearch.results import BEST_DEFINITION, PICKS


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0..65535, got {text!r}")
    return value


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or localhost)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help=command_help("dashboard"),
        description="Serve optuna-dashboard on the run's Optuna storage (run.json's storage URL): "
        "trials with their configs, MACs, params, rank and accuracy curves as user attributes, "
        "objective names on the axes, infeasible trials marked. Stop it with Ctrl-C.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rexsearch run`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080; 0: any free)")
    p.add_argument(
        "--allow-edits",
        action="store_true",
        help="accept the dashboard's writes (rename, delete, notes) from its own pages; "
        "without it the dashboard is read-only",
    )
    p.set_defaults(handler=cmd_dashboard)

    p = sub.add_parser(
        "report",
        help=command_help("report"),
        description="Write RUN_DIR/trials.csv (one row per trial), RUN_DIR/report.html (one "
        "self-contained file that opens offline: Pareto fronts, history, channel profiles, "
        "per-principle analysis, rank calibration, importances, verdict) and RUN_DIR/pareto.png. "
        + macs_convention(),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rexsearch run`")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser(
        "export",
        help=command_help("export"),
        description="Export a trial of a run (RUN_DIR --trial best|N) or a preset (--preset NAME) "
        "into --out DIR: config.json, model.safetensors and a model card README.md, plus "
        "model.onnx or model.torchscript.pt on request. " + BEST_DEFINITION + " The directory is "
        "written to a temporary sibling and renamed into place.",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory (or use --preset)")
    p.add_argument("--trial", default=None, metavar="best|N", help="which trial (default best)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        default=None,
        help="init: the target network, freshly initialised (default); proxy: the CIFAR proxy with "
        "the weights the run kept (needs `run --keep-weights`)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="safetensors",
        help="also write model.onnx (dynamic batch) or model.torchscript.pt; safetensors is always written",
    )
    p.add_argument(
        "--pick",
        choices=PICKS,
        default=None,
        help="what 'best' optimises: accuracy (default; rank for rank-only runs), rank, latency (the "
        "lowest; runs with a latency budget) or balanced (the best sum of rank-normalised objectives "
        "over the feasible Pareto front)",
    )
    p.add_argument("--preset", metavar="NAME", help="export a preset instead of a trial")
    p.add_argument(
        "--layout", choices=LAYOUTS, default="rexsearch", help="state_dict layout (default rexsearch)"
    )
    p.add_argument("--seed", type=SEED, default=None, help="seed of fresh weights (default: the run's, 0)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    p.set_defaults(handler=cmd_export)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from rexsearch.dashboard import dashboard_server

    server = dashboard_server(args.run_dir, args.host, args.port, allow_edits=args.allow_edits)
    if not _loopback(args.host):
        can = "read the study and delete trials or the whole study" if args.allow_edits else "read the study"
        print(
            f"rexsearch: warning: the dashboard listens on {args.host}, beyond this machine, and has no "
            f"authentication: anyone who can reach it can {can}; prefer --host 127.0.0.1 with an SSH tunnel",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"optuna-dashboard for {args.run_dir}: http://{args.host}:{server.server_port}/ "
        f"({'edits allowed' if args.allow_edits else 'read-only'}; Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped")
    finally:
        server.server_close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rexsearch.report import make_report
    from rexsearch.rundir import RunLock, load_run

    # the report's files are the run's: not rewritten beside a live run, resume or confirm
    with RunLock.acquire(load_run(args.run_dir).path):
        files = make_report(args.run_dir)
    print(f"{files.trials} trials")
    print(f"wrote {files.csv}")
    print(f"wrote {files.png}")
    print(f"wrote {files.html}")
    print(files.verdict)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    formats = sorted({"safetensors", args.format})
    if args.preset:
        if args.run_dir:
            raise UserError("give either RUN_DIR or --preset, not both")
        given = [f for f in ("trial", "weights", "pick") if getattr(args, f) is not None]
        if given:
            raise UserError(f"--{given[0]} applies to a run export, not to --preset")
        result = export_preset(
            args.preset, args.out, args.layout, formats, args.force, 0 if args.seed is None else args.seed
        )
    elif args.run_dir:
        result = export_trial(
            args.run_dir,
            args.out,
            trial=args.trial or "best",
            weights=args.weights or "init",
            formats=formats,
            pick=args.pick,
            layout=args.layout,
            force=args.force,
            seed=args.seed,
        )
        print(f"exported {result.selection}")
    else:
        raise UserError("give a RUN_DIR to export a trial, or --preset NAME to export a preset")
    for path in result.files:
        print(f"wrote {path}")
    if result.onnx_max_diff is not None:
        print(f"ONNX matches torch at batch 1 and 8 (max abs diff {result.onnx_max_diff:.2e})")
    return 0
