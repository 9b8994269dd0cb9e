"""Proxy-training throughput under CPU contention, by OpenMP wait policy and thread count.

What a search trial feels on a small machine: one trial alone, two 1-CPU trials side by
side (a search with two trials in parallel on 2 cores), and one 2-CPU trial beside a
competing 2-thread process (another job on the machine). Each training is a separate
process (as Ray's workers are) timing plain SGD steps of rexnet-1.0's CIFAR proxy
(``rexsearch.train.measure_throughput``: median of 5 timings after a warm-up), with
``OMP_WAIT_POLICY`` unset (libgomp spins before it sleeps) or ``PASSIVE``.

    python benchmarks/bench_contention.py [--steps 3] [--batch 128] [--json out.json]

Run it on an otherwise idle machine: the point is the contention it makes itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_WORKER = """
import json, sys, time
import torch
threads, steps, batch, delay = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(threads)
from rexsearch import get_preset
from rexsearch.train import measure_throughput
time.sleep(delay)
print(json.dumps({"images_per_s": measure_throughput(get_preset("rexnet-1.0"), batch, steps=steps)}))
"""

_HOG = """
import sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from rexsearch import get_preset
from rexsearch.model import build_model
from rexsearch.proxy import proxy_config
model = build_model(proxy_config(get_preset("rexnet-1.0")))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 100, (128,))
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
"""


def _env(policy: str | None, threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def _train(threads: int, policy: str | None, steps: int, batch: int, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(threads), str(steps), str(batch), str(delay)],
        env=_env(policy, threads),
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate(timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"a training process failed (exit {proc.returncode})")
    return float(json.loads(out.strip().splitlines()[-1])["images_per_s"])


def scenario(name: str, policy: str | None, steps: int, batch: int) -> list[float]:
    """Training images/s of each training process of one scenario."""
    if name == "alone-1cpu":
        return [_result(_train(1, policy, steps, batch))]
    if name == "alone-2cpu":
        return [_result(_train(2, policy, steps, batch))]
    if name == "two-1cpu-trials":
        procs = [_train(1, policy, steps, batch) for _ in range(2)]
        return [_result(p) for p in procs]
    if name == "2cpu-trial-beside-2-thread-job":
        hog = subprocess.Popen(
            [sys.executable, "-c", _HOG, "2", "600"], env=_env(policy, 2), stdout=subprocess.DEVNULL
        )
        try:
            time.sleep(8)  # the competing job is running before the trial starts
            return [_result(_train(2, policy, steps, batch))]
        finally:
            hog.kill()
            hog.wait()
    raise ValueError(name)


SCENARIOS = ("alone-1cpu", "alone-2cpu", "two-1cpu-trials", "2cpu-trial-beside-2-thread-job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="SGD steps per timing (5 timings each)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (run on an idle machine)")
    rows = []
    for policy in (None, "PASSIVE"):
        for name in SCENARIOS:
            rates = scenario(name, policy, args.steps, args.batch)
            rows.append({"policy": policy or "default", "scenario": name, "images_per_s": rates})
            shown = " + ".join(f"{r:.0f}" for r in rates)
            print(f"{policy or 'default':8s} {name:32s} {shown} images/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
