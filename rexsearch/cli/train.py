"""`rexsearch train` (full training of one config's proxy on a data set) and `rexsearch bench train`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rexsearch.bench import CPU_FP32_PEAK_GFLOPS, bench_training
from rexsearch.cli import command_help
from rexsearch.cli.common import (
    add_config_source,
    add_dataset_flags,
    load_config_source,
    positive_int,
    print_json,
)
from rexsearch.config import ReXNetConfig
from rexsearch.cost import check_memory
from rexsearch.datasets import DEFAULT_DATASET, DataSet, load_dataset
from rexsearch.datasets.splits import evaluation_split
from rexsearch.errors import UserError
from rexsearch.principles import get_preset
from rexsearch.proxy import PROXY_RESOLUTION, proxy_config
from rexsearch.results import RunResults, describe_state, trial_number
from rexsearch.train import (
    EpochMetrics,
    Trainer,
    TrainSettings,
    load_checkpoint,
    save_checkpoint,
    write_json,
)

METRICS_FORMAT = "rexsearch.train-metrics/1"
#: Settings that may differ when a training is resumed (they do not change the numbers' meaning).
_RESUMABLE_CHANGES = ("device", "amp", "compile")


def register(sub: argparse._SubParsersAction) -> None:
    defaults = TrainSettings()
    p = sub.add_parser(
        "train",
        help=command_help("train"),
        usage="%(prog)s (--preset NAME | --config FILE | RUN_DIR --trial N) [options]",
        description="Train the proxy of a config (see README, 'Data sets and proxy training') "
        "on a data set's training images (--dataset: CIFAR-100 by default; with RUN_DIR the run's) and "
        "report top-1 on its test images after every epoch (an image folder without test/: its val/ "
        "images, else a held-out tenth of its images). The proxy's classifier has the data set's classes. "
        "The config is a preset, a config file, or the config of trial N of the search "
        "in RUN_DIR (any trial that has one: complete, pruned, even failed). A checkpoint is "
        "written after each epoch; rerunning the same command with the same --out continues "
        "from the last finished epoch.",
    )
    # One of the three sources; checked in _config_and_source so that every mix-up is a
    # one-line error (exit 2) rather than argparse's usage dump.
    source = p.add_argument_group("what to train (exactly one)")
    source.add_argument(
        "run_dir",
        nargs="?",
        metavar="RUN_DIR",
        help="a run directory written by `rexsearch run`; train the config of its trial --trial N",
    )
    source.add_argument("--preset", metavar="NAME", help="a preset name (see `rexsearch presets`)")
    source.add_argument("--config", metavar="FILE", help="a config JSON file (rexsearch.config/1)")
    source.add_argument(
        "--trial",
        metavar="N",
        help="with RUN_DIR: the trial number whose config to train (see RUN_DIR/trials.csv)",
    )
    opts = p.add_argument_group("training and output")
    opts.add_argument("--epochs", type=positive_int, default=100, help="epochs (default 100)")
    opts.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="default 128")
    opts.add_argument(
        "--lr", type=_positive_float, default=defaults.lr, help="peak learning rate (default 0.1)"
    )
    opts.add_argument("--weight-decay", type=_nonnegative_float, default=defaults.weight_decay, help="5e-4")
    opts.add_argument(
        "--label-smoothing", type=_nonnegative_float, default=defaults.label_smoothing, help="default 0.1"
    )
    opts.add_argument(
        "--warmup-epochs",
        type=_nonnegative_float,
        default=5.0,
        help="warm-up epochs (default 5, at most --epochs)",
    )
    opts.add_argument(
        "--resolution",
        type=positive_int,
        default=PROXY_RESOLUTION,
        help=f"input size (default {PROXY_RESOLUTION})",
    )
    opts.add_argument(
        "--train-images",
        type=positive_int,
        metavar="N",
        help="train on a class-stratified subset of N images (default: all)",
    )
    add_dataset_flags(opts)
    opts.add_argument("--no-download", action="store_true", help="fail instead of downloading the data set")
    opts.add_argument(
        "--seed", type=int, default=0, help="seed of weights, shuffling, augmentation (default 0)"
    )
    opts.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    opts.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    opts.add_argument("--compile", action="store_true", help="torch.compile the model (slow start)")
    opts.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: runs/train-NAME-sSEED; with RUN_DIR: RUN_DIR/train/trial-N-sSEED)",
    )
    opts.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("bench", help=command_help("bench"))
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    p = bench.add_parser(
        "train",
        help="images/s of the proxy trainer vs a naive training loop, same process",
        description="Images/s of the trainer's step and of a naive loop (eager, contiguous NCHW, "
        "a per-image Dataset and DataLoader) on the same proxy network, measured in turns "
        "(medians of --repeats), plus the augmentation pipeline alone, the achieved GFLOP/s "
        "and the peak RSS. Synthetic data; CIFAR-100 is not needed.",
    )
    add_config_source(p, required=False)
    p.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    p.add_argument("--steps", type=positive_int, default=20, help="steps per measurement (default 20)")
    p.add_argument("--repeats", type=positive_int, default=3, help="measurements of each (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--peak-gflops",
        type=_positive_float,
        default=CPU_FP32_PEAK_GFLOPS,
        help=f"peak GFLOP/s for the fraction (default {CPU_FP32_PEAK_GFLOPS:g}, 2-core fp32)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_bench_train)


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


class ProgressBar:
    """A one-line progress bar on a terminal (nothing when the stream is not one)."""

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.shown = False
        self.last = 0.0

    def show(self, label: str, done: int, total: int, detail: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = done / total if total else 0.0
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        self.stream.write(f"\r{label} [{bar}] {100 * frac:3.0f}% {detail}\033[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _label(config: ReXNetConfig, args: argparse.Namespace) -> str:
    return config.name or (Path(args.config).stem if args.config else config.short_hash())


def _identity(trainer: Trainer, args: argparse.Namespace, data: DataSet) -> dict[str, Any]:
    """What must match for a rerun into the same --out to resume rather than start over."""
    settings = {k: v for k, v in trainer.settings.to_dict().items() if k not in _RESUMABLE_CHANGES}
    return {
        "config_hash": trainer.config.content_hash(),
        "settings": settings,
        "train_images": args.train_images,
        "dataset": {"name": data.name, "digest": data.digest},
    }


def _own_output(out: Path) -> bool:
    """Whether ``out`` holds an earlier ``rexsearch train`` output (its metrics.json)."""
    try:
        return json.loads((out / "metrics.json").read_text()).get("format") == METRICS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_out(out: Path) -> None:
    """--out must be new, empty, or an earlier output of rexsearch train (which is resumed)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not _own_output(out):
        raise UserError(
            f"--out {out} is not empty and holds no earlier rexsearch train output (metrics.json); "
            "choose a new or empty folder"
        )


def _check_resume(out: Path, identity: dict[str, Any]) -> None:
    metrics = out / "metrics.json"
    if not (out / "checkpoint.json").is_file():
        return
    try:
        previous = json.loads(metrics.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{out} has a checkpoint but no readable metrics.json; pass another --out") from None
    for key, value in identity.items():
        before = previous.get(key)
        if key == "dataset" and before is None:  # a training recorded before --dataset: CIFAR-100
            before = {"name": "cifar100", "digest": value["digest"]}
        if before == value:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            diffs = [f"{k} {before.get(k)!r}, now {v!r}" for k, v in value.items() if before.get(k) != v]
            what = "; ".join(diffs)
        else:
            what = f"{key} {before!r}, now {value!r}"
        raise UserError(
            f"{out} holds a training with other settings ({what}); rerun with the same flags to resume "
            "it, or pass another --out"
        )


def _config_and_source(
    args: argparse.Namespace,
) -> tuple[ReXNetConfig, dict[str, Any], Path, dict[str, Any]]:
    """The config to train, where it came from (for metrics.json), the default --out, and the
    default data set (``dataset``, ``data_dir``: a run's own, else CIFAR-100)."""
    given = [flag for flag in ("preset", "config") if getattr(args, flag) is not None]
    if len(given) == 2:
        raise UserError("give either --preset or --config, not both")
    if args.run_dir is not None:
        if given:
            raise UserError(
                f"give either RUN_DIR --trial N or --{given[0]}, not both "
                "(RUN_DIR --trial N trains the config of a trial of that run)"
            )
        if args.trial is None:
            raise UserError(
                f"RUN_DIR needs --trial N, the trial to train: rexsearch train {args.run_dir} --trial N"
            )
        number = trial_number(args.trial, expected="a trial number (0, 1, ...)")
        results = RunResults.load(args.run_dir)
        info, trial = results.run, results.trial(number)
        config = results.config(trial, purpose="trained")
        attrs = trial.user_attrs
        source = {
            "kind": "run",
            "run_dir": str(info.path),
            "trial": number,
            "study_name": info.study_name,
            "trial_state": trial.state.name,
            "baseline": attrs.get("baseline"),
            "target_config_hash": config.content_hash(),
            "target_macs": attrs.get("macs"),
            "target_params": attrs.get("params"),
            "budget_resolution": info.resolution,
        }
        if trial.state.name not in ("COMPLETE", "PRUNED") and not args.quiet:
            print(
                f"note: trial {number} has not completed in the search ({describe_state(trial)}); "
                "training its config anyway",
                file=sys.stderr,
            )
        recorded = info.settings
        data = {"dataset": (info.dataset or {}).get("dataset") or recorded.get("dataset") or DEFAULT_DATASET}
        data["data_dir"] = recorded.get("data_dir")
        return config, source, info.train_dir(number, args.seed), data
    if args.trial is not None:
        if given:
            raise UserError(f"--trial N takes its config from a run, not from --{given[0]}; give one of them")
        raise UserError(f"--trial N needs the run directory: rexsearch train RUN_DIR --trial {args.trial}")
    if not given:
        raise UserError("give the config to train: --preset NAME, --config FILE or RUN_DIR --trial N")
    config = load_config_source(args)
    if args.preset:
        source = {"kind": "preset", "preset": args.preset}
    else:
        source = {"kind": "config", "config_file": str(Path(args.config).resolve())}
    source["target_config_hash"] = config.content_hash()
    default_data = {"dataset": DEFAULT_DATASET, "data_dir": None}
    return config, source, Path(f"runs/train-{_label(config, args)}-s{args.seed}"), default_data


def cmd_train(args: argparse.Namespace) -> int:
    config, source, default_out, default_data = _config_and_source(args)
    dataset = default_data["dataset"] if args.dataset is None else args.dataset
    data_dir = args.data_dir or (default_data["data_dir"] if dataset == default_data["dataset"] else None)
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        warmup_epochs=min(args.warmup_epochs, args.epochs),
        resolution=args.resolution,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        compile=args.compile,
    )
    out = Path(args.out) if args.out else default_out
    _check_out(out)  # before the data is loaded: a foreign folder is refused at once
    # the proxy at its training batch, with a 100-class head (the largest of the named sets)
    check_memory(
        proxy_config(config, args.resolution),
        args.resolution,
        args.batch_size,
        purpose="train it",
        training=True,
    )
    bar = ProgressBar(sys.stderr, enabled=not args.quiet)

    def data_progress(kind: str, label: str, done: int, total: int) -> None:
        if kind == "download":
            bar.show(
                f"downloading {label}", done, total, f"{_mb(done)} of {_mb(total)}" if total else _mb(done)
            )
        else:
            bar.show(label, done, total, f"{done:,} of {total:,} images")

    data = load_dataset(
        dataset, data_dir, download=not args.no_download, progress=data_progress, resolution=args.resolution
    )
    bar.clear()
    chosen = evaluation_split(data, args.train_images, args.seed)
    train_x, train_y = chosen.train_x, chosen.train_y
    evaluated = {"test": "test", "val/": "val"}.get(chosen.what, "held-out")
    trainer = Trainer(config, settings, train_y.numel(), data.num_classes, data.mean, data.std)
    identity = _identity(trainer, args, data)
    _check_resume(out, identity)
    out.mkdir(parents=True, exist_ok=True)
    resumed = load_checkpoint(trainer, out)
    trainer.config.save(out / "config.json")
    if not args.quiet:
        start = f"resuming after epoch {trainer.epoch}" if resumed else "starting"
        if trainer.epoch >= settings.epochs:
            start = f"already finished ({trainer.epoch} epochs)"
        print(
            f"{trainer.config.name or 'config'}: {start}; {data.title}, {train_y.numel():,} training images, "
            f"{chosen.test_y.numel():,} {evaluated} images, {data.num_classes} classes, {settings.epochs} "
            f"epochs on {trainer.device}; {out}",
            file=sys.stderr,
        )

    def write_metrics(finished: bool) -> None:
        curve = [m.val_top1 for m in trainer.history]
        write_json(
            out / "metrics.json",
            {
                "format": METRICS_FORMAT,
                "config": trainer.config.name,
                "source": source,
                **identity,
                "data": {**data.identity(), "evaluated_on": chosen.what},
                "test_images": chosen.test_y.numel(),
                "epochs": [m.to_dict() for m in trainer.history],
                "final_test_top1": curve[-1] if curve else None,
                "best_test_top1": max(curve, default=None),
                "finished": finished,
            },
        )

    def on_epoch(m: EpochMetrics) -> None:
        save_checkpoint(trainer, out)
        write_metrics(m.epoch == settings.epochs)
        if not args.quiet:
            bar.clear()
            print(
                f"epoch {m.epoch}/{settings.epochs}  loss {m.train_loss:.3f}  {evaluated} top-1 "
                f"{100 * m.val_top1:.2f}%  {m.seconds:.1f} s  {m.images_per_s:.0f} img/s",
                file=sys.stderr,
            )

    def step_progress(step: int, total: int) -> None:
        per_epoch = trainer.steps_per_epoch
        epoch = (step - 1) // per_epoch + 1
        done = step - (epoch - 1) * per_epoch
        bar.show(f"epoch {epoch}/{settings.epochs}", done, per_epoch, f"{done}/{per_epoch} steps")

    if not trainer.history:
        write_metrics(False)
    result = trainer.fit(train_x, train_y, chosen.test_x, chosen.test_y, on_epoch, step_progress)
    bar.clear()
    write_metrics(True)
    print(
        f"{trainer.config.name or 'config'}: {evaluated} top-1 on {data.title} "
        f"{100 * result.final_accuracy:.2f}% "
        f"(best {100 * result.best_accuracy:.2f}%) after {len(result.history)} epochs; "
        f"weights and metrics in {out}"
    )
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    config = load_config_source(args) if args.preset or args.config else get_preset("rexnet-1.0")
    res = bench_training(config, args.batch_size, args.steps, args.repeats, args.seed, args.peak_gflops)
    if args.json:
        print_json(res)
        return 0
    print(
        f"{res['config']}, batch {res['batch_size']}, {res['steps']} steps x {res['repeats']} "
        f"(medians), {res['device']}, {res['threads']} threads"
    )
    print(f"  trainer   {res['trainer_images_per_s']:9.0f} images/s")
    print(f"  naive     {res['naive_images_per_s']:9.0f} images/s  (speedup {res['speedup']:.2f}x)")
    print(f"  pipeline  {res['pipeline_images_per_s']:9.0f} images/s  (augmentation alone)")
    print(
        f"  compute   {res['gflops_per_s']:9.1f} GFLOP/s  ({100 * res['fraction_of_peak']:.0f}% of "
        f"{res['peak_gflops_per_s']:g}; proxy {res['proxy_macs'] / 1e6:.1f}M MACs/image x 6)"
    )
    print(f"  peak RSS  {res['peak_rss_mb']:9.0f} MiB")
    return 0
