"""Completed trials per hour: `rexsearch run` against the plain script a user would write.

The same N networks at the same fidelity, trained three ways on a synthetic data set in
CIFAR-100's format (the numbers are about throughput, not accuracy; it is not CIFAR-100):

(a) ``rexsearch run`` (Ray Tune + Optuna in SQLite, fvcore check, feature rank, the proxy
    trainer), ``--sampler random``, two 1-CPU trials in parallel;
(b) the plain script from the Optuna and PyTorch tutorials: an Optuna study in SQLite whose
    objective builds the network and trains it with a per-image augmentation ``Dataset``,
    a ``DataLoader`` and an eager NCHW loop, one process with both threads; it trains (a)'s
    configs, enqueued into its study;
(c) the bare training compute: ``rexsearch.train.train_proxy`` on the same configs one
    after another in one process with both threads (no orchestration, no fvcore, no rank).

    python benchmarks/bench_vs_plain.py [--trials 8] [--epochs 2] [--train-images 2000]

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the CIFAR-format archive writer: tests/support/

from support.cifar_archive import write_cifar_archive  # noqa: E402

from rexsearch.config import ReXNetConfig  # noqa: E402
from rexsearch.datasets import load_dataset  # noqa: E402
from rexsearch.datasets.splits import search_split  # noqa: E402
from rexsearch.model import build_model  # noqa: E402
from rexsearch.proxy import proxy_config  # noqa: E402
from rexsearch.results import RunResults  # noqa: E402
from rexsearch.train import TrainSettings, train_proxy  # noqa: E402

MEAN = torch.tensor([0.507, 0.487, 0.441]).view(3, 1, 1)
STD = torch.tensor([0.267, 0.256, 0.276]).view(3, 1, 1)


class PerImage(torch.utils.data.Dataset):
    """What the PyTorch tutorials do: pad, crop, flip and normalise one image at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, train: bool) -> None:
        self.x, self.y, self.train = x, y, train

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i].float() / 255.0
        if self.train:
            img = nn.functional.pad(img, (4, 4, 4, 4), mode="reflect")
            top, left = torch.randint(0, 9, (2,)).tolist()
            img = img[:, top : top + 32, left : left + 32]
            if torch.rand(()) < 0.5:
                img = img.flip(2)
        return (img - MEAN) / STD, self.y[i]


def plain_objective(trial, split, epochs: int, batch: int) -> float:
    config = ReXNetConfig.from_dict(trial.user_attrs["config"])
    model = build_model(proxy_config(config))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(PerImage(split.train_x, split.train_y, True), batch, shuffle=True)
    val = torch.utils.data.DataLoader(PerImage(split.val_x, split.val_y, False), 256)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    accuracy = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
        accuracy = correct / len(split.val_y)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--flops-budget", default="150M")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    import optuna

    print(f"load average before: {os.getloadavg()[0]:.2f} (run on an idle machine)")
    work = Path(tempfile.mkdtemp(prefix="bench-vs-plain-"))
    per_class = (args.train_images + args.val_images) // 100 + 1
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(100).repeat_interleave(per_class)
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), dtype=torch.uint8, generator=gen)
    (work / "data").mkdir()
    archive = work / "data" / "cifar-100-python.tar.gz"
    md5 = write_cifar_archive(
        archive, images, labels, images[:100], labels[:100], [f"class{i}" for i in range(100)]
    )
    env = dict(os.environ, REXSEARCH_CIFAR100_MD5=md5, REXSEARCH_DATA=str(work / "cache"))
    fidelity = ["--epochs", str(args.epochs), "--train-images", str(args.train_images)]
    fidelity += ["--val-images", str(args.val_images), "--batch-size", str(args.batch_size)]

    # (a) rexsearch run
    run_dir = work / "run"
    command = [sys.executable, "-m", "rexsearch.cli", "run", "--flops-budget", args.flops_budget]
    command += ["--trials", str(args.trials), "--sampler", "random", "--run-dir", str(run_dir)]
    command += [
        "--data-dir",
        str(archive.parent),
        "--cpus-per-trial",
        "1",
        "--max-concurrent",
        "2",
        "--quiet",
    ]
    start = time.perf_counter()
    subprocess.run(command + fidelity, env=env, check=True, capture_output=True)
    wall_a = time.perf_counter() - start
    results = RunResults.load(run_dir)
    done = [t for t in results.trials if t.state.name in ("COMPLETE", "PRUNED") and "config" in t.user_attrs]
    configs = [t.user_attrs["config"] for t in done]
    train_a = sum(t.user_attrs.get("train_seconds", 0.0) for t in done)

    os.environ.update(env)
    data = load_dataset("cifar100", archive.parent)
    split = search_split(data, val_images=args.val_images, train_images=args.train_images, seed=0)
    torch.set_num_threads(2)

    # (b) the plain script
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{work / 'plain.db'}", direction="maximize")
    for config in configs:
        study.enqueue_trial({}, user_attrs={"config": config})
    start = time.perf_counter()
    study.optimize(lambda t: plain_objective(t, split, args.epochs, args.batch_size), n_trials=len(configs))
    wall_b = time.perf_counter() - start

    # (c) the bare training compute
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=0.5, amp=False)
    start = time.perf_counter()
    step_seconds = [train_proxy(ReXNetConfig.from_dict(c), split, settings).train_seconds for c in configs]
    wall_c = time.perf_counter() - start

    n = len(configs)
    rows = {
        "(a) rexsearch run, 2 trials in parallel": (wall_a, train_a),
        "(b) plain Optuna + DataLoader script, 1 process": (wall_b, None),
        "(c) the trainer alone, 1 process": (wall_c, sum(step_seconds)),
    }
    print(f"{n} networks, {args.epochs} epochs on {args.train_images} images (synthetic, not CIFAR-100)")
    out = {}
    for name, (wall, train) in rows.items():
        per_hour = 3600 * n / wall
        share = f"{100 * train / wall / (2 if name.startswith('(a)') else 1):.0f}%" if train else "n/a"
        print(f"{name:50s} {wall:8.1f} s  {per_hour:7.1f} trials/h  training share {share}")
        out[name] = {"wall_s": wall, "trials_per_hour": per_hour, "training_seconds": train}
    print(f"(a)/(b) = {wall_b / wall_a:.2f}x, (a) vs (c): {wall_c / wall_a:.2f}x")
    print(f"median training seconds per network (c): {statistics.median(step_seconds):.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
