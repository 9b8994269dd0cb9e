"""What a search's driver does around the trials: the tail hook, the slots, the local Ray's
environment, and the executable's exit."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from rexsearch.search import LiveView, Progress
from rexsearch.search.cluster import Resources


def _trial(status: str, **result) -> SimpleNamespace:
    return SimpleNamespace(status=status, last_result={"final": True, "rank": 0.5, **result})


def test_tail_hook_fires_once_when_a_slot_stays_idle():
    """3 trials on 2 slots: the hook waits until the third trial exists and one of the other two
    ended; Tune still shows the ending trial RUNNING, and it is not counted as running."""
    fired: list[int] = []
    progress = Progress(total=3)
    view = LiveView(progress, None, [0], tail=(3, 2, lambda: fired.append(len(trials))))
    a, b = _trial("RUNNING"), _trial("RUNNING")
    trials = [a, b]
    view.on_trial_start(0, trials, a)
    view.on_trial_start(0, trials, b)
    view.on_trial_complete(0, trials, a)  # a slot frees, but a third trial is still to come
    assert fired == [] and progress.running == 1
    a.status = "TERMINATED"
    c = _trial("PENDING")
    trials.append(c)
    view.on_trial_start(0, trials, c)
    assert fired == []  # both slots busy again
    view.on_trial_complete(0, trials, b)
    assert fired == [3] and progress.running == 0  # c is PENDING, b is ending: one slot idle
    b.status, c.status = "TERMINATED", "RUNNING"
    view.on_trial_complete(0, trials, c)
    assert fired == [3] and progress.done == 3


def test_tail_hook_waits_for_every_slot_to_be_filled_first():
    fired: list[bool] = []
    view = LiveView(Progress(total=4), None, [0], tail=(4, 2, lambda: fired.append(True)))
    trials = [_trial("RUNNING"), _trial("RUNNING")]
    for t in trials:
        view.on_trial_start(0, trials, t)
    view.on_trial_error(0, trials, trials[0])  # two more trials to come: not the tail
    assert fired == []


@pytest.mark.parametrize(
    ("cpus_per_trial", "gpus_per_trial", "cpus", "gpus", "slots"),
    [(1, 0, 2, 0, 2), (2, 0, 2, 0, 1), (1.5, 0, 4, 0, 2), (1, 0.25, 16, 1, 4), (4, 0, 2, 0, 1)],
)
def test_slots_are_the_trials_that_fit_at_once(cpus_per_trial, gpus_per_trial, cpus, gpus, slots):
    assert Resources(cpus_per_trial, gpus_per_trial, cpus, gpus, 1).slots == slots


def test_slots_are_counted_node_by_node(monkeypatch):
    """Two 3-CPU nodes run two 2-CPU trials, not the three their 6 CPUs would suggest."""
    import ray

    from rexsearch.search.cluster import check_resources

    nodes = [{"Alive": True, "Resources": {"CPU": 3.0}}, {"Alive": True, "Resources": {"CPU": 3.0}}]
    nodes.append({"Alive": False, "Resources": {"CPU": 64.0}})
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 6.0})
    total = check_resources(2.0, 0.0)
    assert total["slots"] == 2 and total["nodes"] == 2
    assert Resources(2.0, 0.0, 6.0, 0.0, 2, int(total["slots"])).slots == 2
    assert Resources(2.0, 0.0, 6.0, 0.0, 2).slots == 3  # from the totals alone


_RAY_SETTINGS = ("RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_STRICT_METRIC_CHECKING", "RAY_DEDUP_LOGS")


def test_local_ray_inherits_the_environment_and_a_cluster_gets_a_runtime_env(monkeypatch):
    import ray

    from rexsearch.search import cluster

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    # set, then removed: monkeypatch restores what ensure_ray writes into os.environ
    for name in ("RAY_ADDRESS", "OMP_WAIT_POLICY", *_RAY_SETTINGS):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(cluster, "joins_local_cluster", lambda: False)
    assert cluster.ensure_ray(None)
    assert "runtime_env" not in calls[-1]
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # what the local workers inherit
    monkeypatch.setattr(cluster, "joins_local_cluster", lambda: True)  # a `ray start` cluster here
    cluster.ensure_ray(None)
    assert calls[-1]["runtime_env"] == {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    monkeypatch.setattr(cluster, "check_reachable", lambda address: None)
    cluster.ensure_ray("10.0.0.1:6379")
    assert calls[-1]["address"] == "10.0.0.1:6379" and "runtime_env" in calls[-1]


_ENTRY = """
import atexit, pathlib, sys
marker = pathlib.Path(sys.argv[1])
atexit.register(lambda: marker.write_text("ran"))
sys.argv = ["rexsearch", *sys.argv[2:]]
from rexsearch.cli import entry
entry()
print("not reached")
"""


def _entry(tmp_path, *argv: str) -> tuple[subprocess.CompletedProcess, bool]:
    marker = tmp_path / "atexit.txt"
    marker.unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", _ENTRY, str(marker), *argv], capture_output=True, text=True, timeout=120
    )
    return out, marker.exists()


def test_executable_exits_with_mains_status_after_the_exit_handlers(tmp_path, capsys):
    from rexsearch.cli import main

    assert main(["presets"]) == 0
    expected = capsys.readouterr().out
    out, handlers_ran = _entry(tmp_path, "presets")
    assert (out.returncode, out.stdout, handlers_ran) == (0, expected, True)  # all output flushed
    out, handlers_ran = _entry(tmp_path, "cost", "--preset", "nope")
    assert out.returncode == 2 and handlers_ran and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("rexsearch: error: unknown preset")
    out, handlers_ran = _entry(tmp_path, "--version")  # argparse exits by SystemExit
    assert (out.returncode, out.stdout.strip(), handlers_ran) == (0, "rexsearch 0.1.0", True)
    out, _ = _entry(tmp_path, "no-such-command")
    assert out.returncode == 2 and "not reached" not in out.stdout


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_executable_says_when_its_output_cannot_be_written(tmp_path):
    """stdout on a full device, buffered so the error comes at the final flush: not a silent
    exit 0, but one line on stderr and exit 120."""
    marker = tmp_path / "atexit.txt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        out = subprocess.run(
            [sys.executable, "-c", _ENTRY, str(marker), "presets"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env,
        )
    assert out.returncode == 120, out.stderr
    assert out.stderr.count("\n") == 1 and "the output could not be written" in out.stderr


def test_background_report_hands_its_error_to_the_caller():
    from rexsearch.cli.search import Background

    assert Background(lambda: 42).result() == 42

    def fail():
        raise RuntimeError("report broke")

    with pytest.raises(RuntimeError, match="report broke"):
        Background(fail).result()
