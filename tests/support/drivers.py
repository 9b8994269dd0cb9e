"""rexsearch as its own driver process: a script's JSON answer, a short run's arguments, a
study's trial counts read from the side, and SIGTERM once the driver is ready."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def run_driver_script(script: str, *args: str, timeout: float = 300) -> dict:
    """Run ``script`` as its own Python driver (its own Ray, not the session's) and return the
    JSON object it prints last; fails the test with its stderr when it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage_run_args(run_dir, storage: str, study: str = "rexsearch") -> list[str]:
    """A short rank-only `rexsearch run` on ``storage`` (3 trials, 1 CPU each)."""
    return [
        "run",
        "--flops-budget",
        "200M",
        "--objectives",
        "rank",
        "--trials",
        "3",
        "--cpus-per-trial",
        "1",
        "--storage",
        storage,
        "--study-name",
        study,
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]


def study_counts(db: Path) -> dict[str, int]:
    """Trials per state in a SQLite study, read-only (empty while the file is missing or busy)."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("select state, count(*) from trials group by state").fetchall()
        con.close()
    except sqlite3.Error:
        return {}
    return dict(rows)


def sigterm_when(script: str, args: list[str], ready, env: dict[str, str], what: str) -> tuple[int, str]:
    """Run ``script`` as its own driver, send it SIGTERM once ``ready()`` holds (polled every
    50 ms, at most 120 s), and return its exit code and stderr; fails the test when the driver
    ends first or never gets ready. The driver is killed on any way out."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if ready():
                break
            if proc.poll() is not None:
                pytest.fail(f"{what} ended before SIGTERM: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail(f"{what} never got ready for SIGTERM")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err
