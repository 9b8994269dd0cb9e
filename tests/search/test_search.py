"""End-to-end search tests on a real local Ray (one instance for the session, see conftest)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from support.drivers import run_driver_script, study_counts

from rexsearch.cli import main
from rexsearch.rundir import load_run
from rexsearch.space import Budget

pytestmark = pytest.mark.usefixtures("ray_session")


REQUIRED_ATTRS = {"config", "macs", "params", "fvcore_macs", "rank_per_layer", "rank", "proxy_macs"}


def _trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return load_run(run_dir).open_study().get_trials()


def test_run_end_to_end_over_loopback(tmp_path, cifar_server, monkeypatch):
    monkeypatch.setenv("REXSEARCH_DATA", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            "--flops-budget",
            "150M",
            "--trials",
            "4",
            "--epochs",
            "1",
            "--train-images",
            "300",
            "--val-images",
            "200",
            "--batch-size",
            "50",
            "--run-dir",
            str(run_dir),
            "--cpus-per-trial",
            "1",
            "--seed",
            "3",
            "--objectives",
            "accuracy,rank",
            "--quiet",
        ]
    )
    assert code == 0
    assert (tmp_path / "cache" / "cifar-100-python.tar.gz").exists()
    assert cifar_server.requests == ["/cifar-100-python.tar.gz"]
    trials = _trials(run_dir)
    assert len(trials) == 4
    budget = Budget(150_000_000)
    assert {t.user_attrs.get("baseline") for t in trials} >= {"rexnet-linear", "mobilenetv2-stagewise"}
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["rexnet-linear", "mobilenetv2-stagewise"]
    for t in trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("error")
        assert set(t.user_attrs) >= REQUIRED_ATTRS
        assert budget.lower <= t.user_attrs["macs"] <= budget.macs
        assert t.user_attrs["fvcore_macs"] == t.user_attrs["macs"]
        assert len(t.user_attrs["accuracy_curve"]) == 1
        assert t.values[0] == pytest.approx(t.user_attrs["accuracy_curve"][-1])
        assert t.values[1] == pytest.approx(t.user_attrs["rank"])
        assert t.system_attrs["constraints"] == [float(t.user_attrs["macs"] - budget.macs)]
    study = load_run(run_dir).open_study()
    assert study.metric_names == ["accuracy", "rank"]
    meta = json.loads((run_dir / "run.json").read_text())
    settings = meta["settings"]  # the one record of the settings (run.json/2)
    assert settings["flops_budget"] == 150_000_000 and settings["seed"] == 3
    assert settings["epochs"] == 1 and settings["objectives"] == ["accuracy", "rank"]
    assert not {"budget", "seed", "fidelity", "objectives", "storage", "study_name"} & set(meta)
    assert (run_dir / "report.html").exists() and (run_dir / "trials.csv").exists()
    # the test archive is admitted by REXSEARCH_CIFAR100_MD5: the run says it is not CIFAR-100
    md5 = os.environ["REXSEARCH_CIFAR100_MD5"]
    assert meta["data"]["archive_md5"] == md5 and meta["data"]["cifar100"] is False
    assert meta["data"]["dataset"] == "cifar100" and meta["data"]["digest"] == f"md5:{md5}"
    assert meta["data"]["split"] == {
        "train_images": 300,
        "val_images": 200,
        "seed": 3,
        "validation": "held out of the training images",
    }
    assert meta["settings"]["dataset"] == "cifar100" and meta["data"]["classes"] == 100
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "stand-in data set" in page and "on CIFAR-100</h1>" in page
    assert all(t.user_attrs["proxy_config"]["num_classes"] == 100 for t in trials)


def test_run_on_fashion_mnist_trains_ten_class_proxies(tmp_path, monkeypatch, capsys):
    from support.dataset_files import fashion_env, write_fashion

    monkeypatch.setenv("REXSEARCH_FASHION_MNIST_MD5", fashion_env(write_fashion(tmp_path / "fm")))
    run_dir = tmp_path / "run"
    args = ["run", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "fm"), "--flops-budget", "100M"]
    args += ["--trials", "2", "--epochs", "1", "--train-images", "100"]  # the default objectives
    args += ["--val-images", "50", "--batch-size", "25", "--cpus-per-trial", "1", "--run-dir", str(run_dir)]
    assert main([*args, "--quiet"]) == 0
    assert "Pareto front on Fashion-MNIST" in capsys.readouterr().out
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["data"]["dataset"] == "fashion-mnist" and meta["data"]["classes"] == 10
    assert meta["data"]["split"]["train_images"] == 100 and meta["data"]["image_shape"] == [1, 32, 32]
    # accuracy alone is the default objective; rank is still measured and recorded per trial
    assert meta["settings"]["objectives"] == ["accuracy"]
    assert load_run(run_dir).open_study().metric_names == ["accuracy"]
    for t in _trials(run_dir):
        assert t.state == TrialState.COMPLETE, t.user_attrs.get("error")
        assert t.user_attrs["proxy_config"]["num_classes"] == 10
        assert len(t.values) == 1 and 0 < t.user_attrs["rank"] <= 1
    import pandas as pd

    assert set(pd.read_csv(run_dir / "trials.csv")["dataset"]) == {"fashion-mnist"}


def _failing_trial(tune_config, split=None, job=None):
    """Trial 2 lies about its MACs (the fvcore check fails it); trial 3 crashes its worker."""
    from rexsearch.search import trial_function

    number = tune_config["candidate"].get("number")
    if number == 2:
        tune_config = {"candidate": {**tune_config["candidate"], "macs": 1}}
    if number == 3:
        raise RuntimeError("worker crash")
    trial_function(tune_config, split, job)


def test_failing_trials_do_not_stop_the_search(tmp_path):
    from ray import cloudpickle

    from rexsearch import search

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    settings = search.SearchSettings(
        run_dir=str(tmp_path / "run"),
        flops_budget=200_000_000,
        trials=6,
        objectives=("rank",),
        cpus_per_trial=1,
        max_concurrent=2,
        rank_samples=8,
    )
    search.start_run(settings, ["test"])
    outcome = search.execute(settings, trainable_fn=_failing_trial)
    assert not outcome.interrupted and outcome.finished == 6
    trials = {t.number: t for t in _trials(tmp_path / "run")}
    assert trials[2].state == TrialState.FAIL
    assert "fvcore measured" in trials[2].user_attrs["error"]
    assert trials[3].state == TrialState.FAIL and "worker died" in trials[3].user_attrs["error"]
    # after --trial-retries reruns, with Ray's own reason rather than a generic guess
    assert "see the Ray logs" not in trials[3].user_attrs["error"], trials[3].user_attrs["error"]
    states = {n: (t.state.name, t.user_attrs.get("error")) for n, t in trials.items() if n > 3}
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 4, states


def test_record_outcome_states(tmp_path):
    from rexsearch.search import record_outcome

    study = optuna.create_study(directions=["maximize", "maximize"])
    budget = Budget(100)
    cases = [
        ({"final": True, "accuracy": 0.5, "rank": 0.9}, False, False, TrialState.COMPLETE),
        ({"final": False, "accuracy": 0.2, "rank": 0.9, "epoch": 1}, False, True, TrialState.PRUNED),
        ({"final": False, "accuracy": 0.2, "rank": 0.9, "epoch": 1}, False, False, TrialState.FAIL),
        ({"final": True, "error": "NonFiniteLossError: loss is nan"}, False, False, TrialState.FAIL),
        (None, True, False, TrialState.FAIL),
        ({"final": True, "infeasible": "too big"}, False, False, TrialState.PRUNED),
    ]
    for result, error, stopped, expected in cases:
        trial = study.ask()
        trial.set_user_attr("macs", 120)
        state = record_outcome(study, trial._trial_id, result, error, ("accuracy", "rank"), budget, stopped)
        assert state == expected
        frozen = study.get_trials()[-1]
        assert frozen.state == expected
        assert frozen.system_attrs["constraints"] == [20.0]
    interrupted = study.get_trials()[2]
    assert interrupted.user_attrs["interrupted"] is True
    assert "nan" in study.get_trials()[3].user_attrs["error"]


SLOW_RUN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from rexsearch import search

    def slow_trial(tune_config, split=None, job=None):
        time.sleep(1.5)  # wide enough a window to be killed while trials run
        search.trial_function(tune_config, split, job)

    search.ensure_ray(None)
    settings = search.SearchSettings(run_dir=sys.argv[1], flops_budget=300_000_000, trials=10,
                                     objectives=("rank",), cpus_per_trial=1, max_concurrent=2)
    search.start_run(settings, ["test"])
    search.execute(settings, trainable_fn=slow_trial)
    """
)


def test_resume_after_sigkill(tmp_path):
    import ray

    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN_SCRIPT, str(run_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            counts = study_counts(run_dir / "study.db")
            if counts.get("COMPLETE", 0) >= 2 and counts.get("RUNNING", 0) >= 1:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("the run made no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {t.number: t for t in _trials(run_dir)}
    complete_before = {n: t.values for n, t in before.items() if t.state == TrialState.COMPLETE}
    running_before = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert complete_before and running_before

    assert main(["resume", str(run_dir), "--quiet"]) == 0
    after = {t.number: t for t in _trials(run_dir)}
    for n, values in complete_before.items():  # nothing finished is lost or redone
        assert after[n].state == TrialState.COMPLETE and after[n].values == values
    for n in running_before:  # orphans are FAIL (interrupted) and rerun once
        assert after[n].state == TrialState.FAIL and after[n].user_attrs["interrupted"]
        reruns = [t for t in after.values() if t.user_attrs.get("rerun_of") == n]
        assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE
        # the rerun keeps every parameter the orphan had drawn (a driver killed while the
        # sampler was drawing leaves an orphan with part of them; the rest are drawn anew)
        assert after[n].params.items() <= reruns[0].params.items()
    counted = [t for t in after.values() if not t.user_attrs.get("interrupted")]
    assert len(counted) == 10
    assert all(t.state.is_finished() for t in after.values())
    assert main(["resume", str(run_dir), "--quiet"]) == 0  # a finished run stays as it is
    assert len(_trials(run_dir)) == len(after)


TWO_NODE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from ray.cluster_utils import Cluster
    from rexsearch import search

    def slow_trial(tune_config, split=None, job=None):
        time.sleep(4)  # long enough that both nodes hold a trial at once
        search.trial_function(tune_config, split, job)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        settings = search.SearchSettings(run_dir=sys.argv[1], flops_budget=200_000_000, trials=4,
                                         objectives=("rank",), cpus_per_trial=1, rank_samples=8,
                                         storage_path=sys.argv[1] + "-ray")
        search.start_run(settings, ["test"])
        outcome = search.execute(settings, trainable_fn=slow_trial)
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        ray.shutdown()
    finally:
        cluster.shutdown()
    print(json.dumps({"finished": outcome.finished, "nodes": nodes}))
    """
)


def test_two_node_cluster_uses_both_nodes(tmp_path):
    run_dir = tmp_path / "run"
    report = run_driver_script(TWO_NODE_SCRIPT, str(run_dir))
    assert report["finished"] == 4 and len(report["nodes"]) == 2
    trials = _trials(run_dir)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["node"] for t in trials} == set(report["nodes"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--flops-budget", "400Q"], "--flops-budget must be a number"),
        (["--flops-budget", "100K"], "smallest reachable cost is"),
        (
            ["--flops-budget", "400M", "--gpus-per-trial", "1"],
            "no Ray node can run a trial with 2 CPU and 1 GPU",
        ),
        (["--flops-budget", "400M", "--sampler", "cmaes"], "--sampler must be one of tpe, nsga2, gp, random"),
        (["--flops-budget", "400M", "--objectives", "accuracy,loss"], "--objectives must be"),
    ],
)
def test_bad_input_exit_2_without_run_dir(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    defaults = [] if "--objectives" in args else ["--objectives", "rank"]
    code = main(["run", *args, *defaults, "--cpus-per-trial", "2", "--run-dir", str(run_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not run_dir.exists()


def test_malformed_space_exit_2(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(
        "generator: linear\nvariables:\n  start: {low: 8, high: 32}\n  colour: {choices: [red]}\n"
    )
    assert (
        main(
            [
                "run",
                "--flops-budget",
                "400M",
                "--space",
                str(space),
                "--objectives",
                "rank",
                "--run-dir",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    assert "line 4: unknown variable 'colour'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_touched(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{}")
    assert main(["run", "--flops-budget", "400M", "--objectives", "rank", "--run-dir", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "run.json").read_text() == "{}"
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"]


def test_eta_counts_the_split_the_trials_train_on():
    from types import SimpleNamespace

    import torch

    from rexsearch import search

    settings = search.SearchSettings(run_dir="unused", flops_budget=400_000_000, trials=4, epochs=3)
    small = SimpleNamespace(train_y=torch.zeros(1200), val_y=torch.zeros(300))
    seconds = search.estimate_training_seconds(settings, small, images_per_s=100.0)
    assert seconds == pytest.approx(4 * 3 * (1200 + 300 / 3) / 100.0)  # not CIFAR-100's 45,000 images


def test_eta_follows_max_concurrent_and_cpus_per_trial():
    """Trials that run side by side share the wall time: the estimate divides by how many run
    at once, which --max-concurrent and the per-trial CPUs decide."""
    from types import SimpleNamespace

    import torch

    from rexsearch import search
    from rexsearch.search.cluster import Resources

    small = SimpleNamespace(train_y=torch.zeros(1200), val_y=torch.zeros(300))
    two_cpus = Resources(cpus_per_trial=1.0, gpus_per_trial=0.0, cpus=2.0, gpus=0.0, nodes=1)
    one_slot = Resources(cpus_per_trial=2.0, gpus_per_trial=0.0, cpus=2.0, gpus=0.0, nodes=1)
    base = {"run_dir": "unused", "flops_budget": 400_000_000, "trials": 4, "epochs": 3}
    free = search.SearchSettings(**base)
    capped = search.SearchSettings(**base, max_concurrent=1)
    assert search.concurrent_trials(free, two_cpus) == 2
    assert search.concurrent_trials(capped, two_cpus) == 1
    assert search.concurrent_trials(free, one_slot) == 1
    serial = search.estimate_training_seconds(free, small, 100.0)
    assert search.estimate_training_seconds(free, small, 100.0, concurrent=2) == pytest.approx(serial / 2)
    # fewer trials than slots: one round, not a fraction of one trial
    one = search.estimate_training_seconds(search.SearchSettings(**{**base, "trials": 1}), small, 100.0)
    assert search.estimate_training_seconds(free, small, 100.0, concurrent=16) == pytest.approx(one)


def _slow_trial(tune_config, split=None, job=None):
    """A rank trial that takes a second longer, so that a time budget runs out mid-search."""
    import time

    from rexsearch.search import trial_function

    time.sleep(1.0)
    trial_function(tune_config, split, job)


@pytest.mark.usefixtures("ray_session")
def test_time_budget_stops_launching_trials_and_keeps_the_run_resumable(tmp_path):
    from ray import cloudpickle

    from rexsearch import search

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    settings = search.SearchSettings(
        run_dir=str(tmp_path / "run"),
        flops_budget=200_000_000,
        trials=12,
        objectives=("rank",),
        cpus_per_trial=1,
        max_concurrent=1,
        rank_samples=8,
        time_budget=2.0,
    )
    search.start_run(settings, ["test"])
    outcome = search.execute(settings, trainable_fn=_slow_trial)
    assert outcome.stopped_by_time and not outcome.interrupted
    assert 1 <= outcome.finished < 12
    # the trials it started ended (none left running); an enqueued baseline not reached waits
    ran = [t for t in _trials(tmp_path / "run") if t.state != TrialState.WAITING]
    assert len(ran) == outcome.finished
    assert all(t.state == TrialState.COMPLETE for t in ran), [t.state for t in ran]


def test_the_status_line_ticks_with_every_epoch_of_a_running_trial(capsys):
    from types import SimpleNamespace

    from rexsearch.cli.status import StatusLine
    from rexsearch.search.tune import LiveView, Progress

    progress = Progress(total=4, epochs_per_trial=3)
    line = StatusLine(quiet=False)
    view = LiveView(progress, line, [0])
    a, b = SimpleNamespace(trial_id="a", status="RUNNING"), SimpleNamespace(trial_id="b", status="RUNNING")
    view.on_trial_result(0, [a, b], a, {"epoch": 1})
    view.on_trial_result(0, [a, b], b, {"epoch": 2})
    view.on_trial_result(0, [a, b], a, {"epoch": 2})
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3  # a line per epoch, before any trial ended
    assert "running 2 (epochs 2/3, 2/3)" in lines[-1] and "elapsed" in lines[-1]
    a.last_result = {"final": True, "accuracy": 0.8123}
    view.on_trial_complete(0, [a, b], a)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "done 1, running 1 (epochs 2/3)" in last and "acc 81.23%" in last
