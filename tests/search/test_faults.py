"""Fault injection: a node lost mid-trial, a trial past --trial-timeout, cluster checks, auth hints.

The driver killed with SIGKILL and resumed is in test_search.py; an unreachable storage
is in test_postgres.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState
from support.drivers import run_driver_script

from rexsearch import search
from rexsearch.cli import main
from rexsearch.errors import UserError
from rexsearch.rundir import load_run
from rexsearch.search import cluster

pytestmark = pytest.mark.usefixtures("ray_session")


def _trials(run_dir: Path):
    return load_run(run_dir).open_study().get_trials()


NODE_FAILURE_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from rexsearch import search

    run_dir = sys.argv[1]
    marker = Path(run_dir + ".victim")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    victim = worker.node_id

    def trial_on_doomed_node(tune_config, split=None, job=None):
        # the first trial to land on the worker node stays there until the node is removed
        if ray.get_runtime_context().get_node_id() == victim:
            marker.write_text(str(tune_config["candidate"]["number"]))
            time.sleep(300)
        deadline = time.time() + 120  # the head stays busy until a trial has reached the worker
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        search.trial_function(tune_config, split, job)

    def remove_worker_when_busy():
        while not marker.exists():
            time.sleep(0.05)
        cluster.remove_node(worker)

    events = []
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        settings = search.SearchSettings(run_dir=run_dir, flops_budget=200_000_000, trials=4,
                                         objectives=("rank",), cpus_per_trial=1, rank_samples=8,
                                         storage_path=run_dir + "-ray")
        search.start_run(settings, ["test"])
        threading.Thread(target=remove_worker_when_busy, daemon=True).start()
        outcome = search.execute(settings, trainable_fn=trial_on_doomed_node, on_event=events.append)
        ray.shutdown()
    finally:
        cluster.shutdown()
    print(json.dumps({"finished": outcome.finished, "victim": int(marker.read_text()),
                      "worker": victim, "events": events}))
    """
)


def test_worker_node_removed_mid_trial_is_retried(tmp_path):
    run_dir = tmp_path / "run"
    report = run_driver_script(NODE_FAILURE_SCRIPT, str(run_dir))
    assert report["finished"] == 4
    assert any("is retried (1 of --trial-retries 2)" in e for e in report["events"]), report["events"]
    trials = {t.number: t for t in _trials(run_dir)}
    # every trial accounted for: the one whose node died ran again elsewhere and finished
    assert sorted(trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials.values()), [t.state for t in trials.values()]
    assert trials[report["victim"]].user_attrs["node"] != report["worker"]


def test_trial_past_timeout_is_stopped_and_failed(tmp_path, cifar_server, monkeypatch, capsys):
    monkeypatch.setenv("REXSEARCH_DATA", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    args = ["run", "--flops-budget", "150M", "--trials", "2", "--epochs", "200", "--train-images", "300"]
    args += ["--val-images", "100", "--batch-size", "50", "--run-dir", str(run_dir), "--cpus-per-trial", "1"]
    # 12 s: past fvcore and the rank even on a loaded machine, far short of 200 epochs
    code = main([*args, "--max-concurrent", "1", "--trial-timeout", "12", "--quiet"])
    assert code == 1  # nothing completed: not a success
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trial completed (2 ran)" in err[0], err
    assert "TrialTimeoutError: the trial ran past --trial-timeout 12 s" in err[0], err
    trials = _trials(run_dir)
    assert len(trials) == 2
    for t in trials:
        assert t.state == TrialState.FAIL
        error = t.user_attrs["error"]
        assert error.startswith("TrialTimeoutError: the trial ran past --trial-timeout 12 s"), error
        assert "at training step" in error  # stopped inside the training, not after it
        assert len(t.user_attrs.get("accuracy_curve", [])) < 200


def test_deadline():
    search.Deadline(None).check("anywhere")
    search.Deadline(60).check("early")
    late = search.Deadline(0.5)
    late.start -= 1.0
    with pytest.raises(search.TrialTimeoutError, match=r"--trial-timeout 0.5 s \(1\.\d s, stopped here\)"):
        late.check("here")


def test_multi_node_cluster_needs_shared_storage_path(tmp_path, capsys, monkeypatch):
    settings = search.SearchSettings(run_dir=str(tmp_path / "r"), flops_budget=400_000_000)
    search.check_cluster(settings, 1)
    with pytest.raises(UserError, match=r"this Ray cluster has 3 nodes.*--storage-path"):
        search.check_cluster(settings, 3)
    search.check_cluster(search.SearchSettings(**{**settings.to_dict(), "storage_path": "s3://b/p"}), 3)

    monkeypatch.setattr(cluster, "check_resources", lambda cpus, gpus: {"CPU": 2.0, "GPU": 0.0, "nodes": 2.0})
    run_dir = tmp_path / "run"
    args = ["run", "--flops-budget", "400M", "--objectives", "rank", "--run-dir", str(run_dir), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "this Ray cluster has 2 nodes" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_bad_timeout_and_retries_exit_2(tmp_path, capsys):
    base = ["run", "--flops-budget", "400M", "--objectives", "rank", "--run-dir", str(tmp_path / "run")]
    assert main([*base, "--trial-timeout", "0"]) == 2
    assert "--trial-timeout must be a positive number of seconds" in capsys.readouterr().err
    assert main([*base, "--trial-retries", "-1"]) == 2
    assert "--trial-retries must not be negative" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_auth_mismatch_is_explained(tmp_path, monkeypatch):
    error = tmp_path / "error.txt"
    error.write_text(
        "Failure # 1\nTraceback (most recent call last):\n  ...\n"
        "ray.exceptions.RaySystemError: System error: Missing authorization header\n"
    )
    trial = SimpleNamespace(trial_id="t1", error_file=str(error))
    assert search.trial_error_message(trial).endswith("Missing authorization header")
    events: list[str] = []
    notes: list[tuple[str, str]] = []
    view = search.LiveView(search.Progress(total=1), None, [0], events.append, lambda *a: notes.append(a))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    view.on_trial_error(0, [], trial)
    assert notes == [("t1", search.trial_error_message(trial))]
    view.on_trial_error(0, [], SimpleNamespace(trial_id="t2", error_file=str(error)))
    assert len(events) == 1 and "RAY_AUTH_MODE (here: disabled)" in events[0]  # said once

    import ray

    def refuse(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(UserError, match="RAY_AUTH_MODE \\(here: disabled\\)") as info:
        search.ensure_ray("10.0.0.1:6379")
    assert "\n" not in str(info.value)


FAKE_GPU_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from rexsearch import search

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        settings = search.SearchSettings(run_dir=sys.argv[1], flops_budget=200_000_000, trials=3,
                                         objectives=("rank",), rank_samples=8, cpus_per_trial=0.5)
        cpus, gpus = search.default_resources(settings)
        search.start_run(settings, ["test"])
        outcome = search.execute(settings)
    finally:
        ray.shutdown()
    print(json.dumps({"cpus": cpus, "gpus": gpus, "finished": outcome.finished}))
    """
)


def test_fractional_gpu_share_runs_trials(tmp_path):
    # the GPU path of the search on a machine without one: Ray advertises a GPU it does not
    # have, trials ask for a quarter of it each, and train on the CPU torch falls back to
    run_dir = tmp_path / "run"
    report = run_driver_script(FAKE_GPU_SCRIPT, str(run_dir))
    assert report == {"cpus": 0.5, "gpus": 0.25, "finished": 3}
    assert all(t.state == TrialState.COMPLETE for t in _trials(run_dir))


def test_default_resources_share_gpus(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    settings = search.SearchSettings(run_dir="unused", flops_budget=400_000_000)
    assert search.default_resources(settings) == (2.0, 0.25)  # 8 trials share 2 GPUs and 16 CPUs
    half = search.SearchSettings(**{**settings.to_dict(), "gpus_per_trial": 0.5})
    assert search.default_resources(half) == (4.0, 0.5)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert search.default_resources(settings) == (2.0, 0.0)


def test_unreachable_ray_address_fails_at_once(monkeypatch, tmp_path, capsys):
    import socket

    import ray

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    run_dir = tmp_path / "run"
    args = ["run", "--flops-budget", "400M", "--objectives", "rank", "--run-dir", str(run_dir)]
    assert main([*args, "--address", f"127.0.0.1:{port}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot join Ray at 127.0.0.1:{port}: nothing answers there" in err
    assert "ray start --head" in err and "Traceback" not in err and not run_dir.exists()


def test_trial_workers_wait_passively():
    """Workers of the Ray a run starts get OMP_WAIT_POLICY=PASSIVE (spinning threads of two trials
    starve each other on shared cores); a value the user exported wins."""
    script = textwrap.dedent(
        """
        import json, os, sys
        import ray
        from rexsearch.search.cluster import ensure_ray
        if sys.argv[1] != "unset":
            os.environ["OMP_WAIT_POLICY"] = sys.argv[1]
        else:
            os.environ.pop("OMP_WAIT_POLICY", None)
        started = ensure_ray(None)
        policy = ray.get(ray.remote(lambda: os.environ.get("OMP_WAIT_POLICY")).remote())
        if started:
            ray.shutdown()
        print(json.dumps({"started": started, "policy": policy}))
        """
    )
    assert run_driver_script(script, "unset") == {"started": True, "policy": "PASSIVE"}
    assert run_driver_script(script, "ACTIVE")["policy"] == "ACTIVE"


def test_run_from_a_folder_holding_a_rexsearch_folder_trains(tmp_path):
    """Ray puts the driver's working directory on the workers' sys.path: an empty ``rexsearch/``
    there (the clone's folder, seen from its parent) must not shadow the installed package."""
    import csv
    import os
    import shutil
    import subprocess
    import sys

    from support.drivers import storage_run_args

    script = shutil.which("rexsearch", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the rexsearch console script is not installed beside this Python")
    (tmp_path / "rexsearch").mkdir()
    run_dir = tmp_path / "run"
    args = storage_run_args(run_dir, f"sqlite:///{tmp_path / 'study.db'}")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    out = subprocess.run(
        [script, *args[:-1]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(run_dir / "trials.csv", newline="") as f:
        states = [row["state"] for row in csv.DictReader(f)]
    assert states == ["COMPLETE"] * 3, (states, out.stderr[-2000:])


def test_settings_every_trial_would_refuse_are_refused_first(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["run", "--flops-budget", "100M", "--epochs", "200000", "--run-dir", str(run_dir)])
    assert code == 2 and not run_dir.exists()
    err = capsys.readouterr().err
    assert "--epochs must be at most 100,000" in err and err.count("\n") == 1, err


def test_none_completed_names_the_first_failure():
    import pandas as pd

    from rexsearch.cli.common import none_completed

    def table(rows):
        return pd.DataFrame(rows, columns=["number", "state", "error", "baseline"])

    ran = table(
        [
            (0, "COMPLETE", "", "rexnet-linear"),
            (1, "COMPLETE", "", "mobilenetv2-stagewise"),
            (3, "FAIL", "TrialTimeoutError: the trial ran past --trial-timeout 5 s", ""),
            (2, "PRUNED", "", ""),
        ]
    )
    assert none_completed(ran, "trial") is None  # the baselines completed
    searched = ran[ran["baseline"] == ""]
    why = none_completed(searched, "searched trial")
    assert why.startswith(
        "no searched trial completed (2 ran); the first failure, trial 3: TrialTimeoutError"
    )
    assert none_completed(table([(0, "PRUNED", "", "")]), "trial").endswith("trial 0: pruned")
    assert none_completed(table([]), "trial") is None  # nothing ran: nothing to say
