"""Runs, resume, exports, secrets and signals under careless or hostile use (README: Reliability).

The fast tests work on the fake run of :mod:`support.runfixture`; the Ray tests are short
rank-only searches on the session's Ray, plus one driver with its own local Ray that is killed.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from support import runfixture
from support.drivers import sigterm_when, study_counts

from rexsearch.cli import main
from rexsearch.errors import UserError
from rexsearch.rundir import LOCK_FILE, RUN_SQLITE, RunLock, load_run, stored_storage

SECRET = "s3cret-Pa55word"


def _make_resumable(run_dir: Path, **settings_kw) -> Path:
    """A fixture run whose run.json also carries the settings `resume` reads."""
    from rexsearch.search import SearchSettings

    runfixture.make_run(run_dir, objectives=("rank",))
    meta = run_dir / "run.json"
    data = json.loads(meta.read_text())
    settings = SearchSettings(
        run_dir=str(run_dir), flops_budget=runfixture.BUDGET, objectives=("rank",), trials=20, **settings_kw
    )
    data["settings"] = settings.to_dict()
    meta.write_text(json.dumps(data))
    return run_dir


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------- runs and resume
def test_report_and_dashboard_never_create_an_empty_study(tmp_path, capsys):
    run = runfixture.make_run(tmp_path / "run")
    (run.path / "study.db").unlink()
    assert main(["report", str(run.path)]) == 2
    assert main(["dashboard", str(run.path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "study database" in err and "is missing" in err and "Traceback" not in err
    assert not (run.path / "study.db").exists()


def test_reading_a_zero_byte_study_writes_nothing_into_it(tmp_path, capsys):
    run_dir = _make_resumable(tmp_path / "run")
    (run_dir / "study.db").write_bytes(b"")
    out = tmp_path / "out"
    for command in (
        ["report", str(run_dir)],
        ["dashboard", str(run_dir), "--port", "0"],
        ["export", str(run_dir), "--trial", "best", "--out", str(out)],
        ["resume", str(run_dir), "--quiet"],
    ):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "is not a SQLite database" in err and "Traceback" not in err, (command, err)
        assert (run_dir / "study.db").stat().st_size == 0, command
    assert not out.exists()


@pytest.mark.parametrize("damage", ["missing", "renamed", "empty"])
def test_resume_of_a_run_without_its_study_is_refused_and_writes_nothing(tmp_path, capsys, damage):
    import optuna

    run_dir = _make_resumable(tmp_path / "run")
    db = run_dir / "study.db"
    if damage == "missing":
        db.unlink()
    elif damage == "renamed":
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        storage.delete_study(storage.get_study_id_from_name("rexsearch"))
        optuna.create_study(study_name="other", storage=storage)
    else:
        db.unlink()
        optuna.create_study(study_name="rexsearch", storage=f"sqlite:///{db}")
    before = _listing(run_dir)
    assert main(["resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rexsearch: error:") and err.count("\n") <= 2 and "Traceback" not in err
    assert {"missing": "is missing", "renamed": "is not in", "empty": "holds no trials"}[damage] in err
    assert _listing(run_dir) == before  # no new study, trials.csv, report or lock


def test_a_copied_run_directory_reads_its_own_study(tmp_path, capsys):
    run = runfixture.make_run(tmp_path / "run")
    meta = run.path / "run.json"
    meta.write_text(meta.read_text().replace(f"sqlite:///{run.path / 'study.db'}", RUN_SQLITE))
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run.path, copy)
    shutil.rmtree(run.path)
    assert load_run(copy).storage_url == f"sqlite:///{copy.resolve() / 'study.db'}"
    assert main(["report", str(copy)]) == 0, capsys.readouterr().err
    assert (copy / "report.html").is_file() and not run.path.exists()


def test_old_runs_with_an_absolute_sqlite_path_still_load(tmp_path):
    run = runfixture.make_run(tmp_path / "run", layout="v1")  # run.json/1, the old, absolute form
    assert json.loads((run.path / "run.json").read_text())["storage"].startswith("sqlite:////")
    assert len(load_run(run.path).open_study().trials) > 10


def test_stored_storage_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert stored_storage(None, tmp_path / "run") == "sqlite:///study.db"
    assert stored_storage("sqlite:///mine.db", tmp_path / "run") == f"sqlite:///{tmp_path.resolve()}/mine.db"
    pg = f"postgresql+psycopg2://bob:{SECRET}@db.example:5432/x?sslmode=require"
    assert stored_storage(pg, tmp_path) == "postgresql+psycopg2://bob@db.example:5432/x?sslmode=require"


def test_a_second_driver_is_refused_naming_the_first(tmp_path, capsys):
    run_dir = _make_resumable(tmp_path / "run")
    with RunLock.acquire(run_dir):
        assert main(["resume", str(run_dir), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by process {os.getpid()} on " in err and "Traceback" not in err
        assert main(["run", "--resume", "--run-dir", str(run_dir), "--quiet"]) == 2
    RunLock.acquire(run_dir).release()  # free again once released


def test_a_second_run_on_the_same_new_folder_writes_nothing(tmp_path, capsys):
    """Two `run`s started on one new --run-dir: the second is refused before it writes run.json."""
    run_dir = tmp_path / "new"
    run_dir.mkdir()
    with RunLock.acquire(run_dir):  # the first driver, between taking the lock and writing run.json
        code = main(["run", "--flops-budget", "200M", "--objectives", "rank", "--run-dir", str(run_dir)])
        assert code == 2
        assert f"is in use by process {os.getpid()}" in capsys.readouterr().err
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # no run.json, no study.db


@pytest.mark.parametrize("command", [["report"], ["confirm", "--top", "1", "--seeds", "1"]])
def test_commands_that_write_into_a_run_take_its_lock(tmp_path, capsys, command):
    run_dir = _make_resumable(tmp_path / "run")
    before = _listing(run_dir)
    with RunLock.acquire(run_dir):  # a live resume
        assert main([command[0], str(run_dir), *command[1:]]) == 2
        assert "is in use by process" in capsys.readouterr().err
    after = _listing(run_dir)
    after.pop(LOCK_FILE, None)
    before.pop(LOCK_FILE, None)
    assert after == before


@pytest.mark.parametrize("storage", ["sqlite:///../other/study.db", "OTHER_ABSOLUTE"])
def test_run_json_cannot_point_into_another_runs_study(tmp_path, capsys, storage):
    other = runfixture.make_run(tmp_path / "other")
    run_dir = _make_resumable(tmp_path / "run")
    data = json.loads((run_dir / "run.json").read_text())
    if storage == "OTHER_ABSOLUTE":
        storage = f"sqlite:///{other.path.resolve() / 'study.db'}"
    data["settings"]["storage"] = storage
    (run_dir / "run.json").write_text(json.dumps(data))
    trials = len(other.open_study().trials)
    for command in (["resume", str(run_dir), "--quiet"], ["report", str(run_dir)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "storage" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert len(other.open_study().trials) == trials


def test_a_killed_drivers_lock_is_not_stuck(tmp_path):
    script = "import sys, time; from rexsearch.rundir import RunLock; RunLock.acquire(sys.argv[1]); "
    script += "print('locked', flush=True); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"process {proc.pid} on"):
            RunLock.acquire(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    RunLock.acquire(tmp_path).release()  # the kernel released it with the process
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_session_seed():
    from rexsearch.search import session_seed

    assert session_seed(7, 0) == 7  # a new run keeps its seed
    seeds = {session_seed(7, n) for n in range(1, 50)}
    assert len(seeds) == 49 and 7 not in seeds and all(0 <= s < 2**32 for s in seeds)
    assert session_seed(7, 5) == session_seed(7, 5) != session_seed(8, 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "--seed must be an integer in [0, 2^32)"),
        (["--seed", str(2**32)], "--seed must be an integer in [0, 2^32)"),
        (["--batch-size", "1"], "--batch-size must be at least 2"),
        (["--batch-size", "100000", "--objectives", "accuracy"], "larger than the training split (45,000"),
        (["--resolution", "16"], "--resolution must be at least 32"),
        (["--flops-budget", "500G"], "the largest reachable cost is about"),
        (["--flops-budget", "1e400"], "too large"),
        (["--study-name", ""], "--study-name must be a non-empty printable name"),
        (["--study-name", "other-run-confirm"], "names the confirmation study of the run 'other-run'"),
    ],
)
def test_bad_flags_exit_2_before_run_json(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    defaults = [] if "--objectives" in args else ["--objectives", "rank"]
    budget = [] if "--flops-budget" in args else ["--flops-budget", "300M"]
    assert main(["run", *budget, *args, *defaults, "--run-dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("run-dir-file", "is a file; give a directory"),
        ("run-dir-full", "exists and is not empty; choose another --run-dir"),
        ("data-dir-missing", "is not a folder (nothing is there)"),
        ("data-dir-file", "is not a folder (a file)"),
        ("objectives-twice", "--objectives names an objective twice"),
        ("latency-alone", "--objectives latency alone would only find the fastest network"),
        ("dataset-empty", "--dataset must be one of cifar100, cifar10, fashion-mnist, folder, got ''"),
    ],
)
def test_bad_run_and_data_dirs_are_refused_before_data_or_ray(tmp_path, capsys, monkeypatch, case, message):
    """Refused in one line before the data set is looked for: the CIFAR-100 download would fail
    on this closed loopback port with another message, and nothing is written."""
    monkeypatch.setenv("REXSEARCH_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("REXSEARCH_CIFAR100_URL", "http://127.0.0.1:9/cifar-100-python.tar.gz")
    a_file, full, run_dir = tmp_path / "afile", tmp_path / "full", tmp_path / "run"
    a_file.write_text("x")
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    extra = {
        "run-dir-file": ["--run-dir", str(a_file)],
        "run-dir-full": ["--run-dir", str(full)],
        "data-dir-missing": ["--run-dir", str(run_dir), "--data-dir", str(tmp_path / "typo")],
        "data-dir-file": ["--run-dir", str(run_dir), "--data-dir", str(a_file)],
        "objectives-twice": ["--run-dir", str(run_dir), "--objectives", "accuracy,rank,accuracy"],
        "latency-alone": ["--run-dir", str(run_dir), "--objectives", "latency"],
        "dataset-empty": ["--run-dir", str(run_dir), "--dataset", ""],
    }[case]
    assert main(["run", "--flops-budget", "300M", "--trials", "2", *extra, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "download" not in err, err
    assert a_file.read_text() == "x" and [p.name for p in full.iterdir()] == ["keep.txt"]
    assert not run_dir.exists() and not (tmp_path / "cache").exists()


def test_usage_errors_are_one_line(capsys):
    for argv in (["run", "--flops-budget", "400M", "--trials", "0"], ["run", "--flops-budget", "-5M"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("rexsearch run: error: argument ") and err.count("\n") == 1, err
        assert "(see `rexsearch run --help`)" in err and "usage:" not in err
    assert "written --option=VALUE" in err  # -5M was read as an option


def test_run_dir_that_is_a_file(tmp_path, capsys):
    from rexsearch.search import SearchSettings, start_run

    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        start_run(SearchSettings(run_dir=str(path), flops_budget=300_000_000, objectives=("rank",)), [])
    assert path.read_text() == "x"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": "\xff"}', "is not UTF-8 text (byte 12)"),
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "is nested too deeply"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "holds an integer of more than"),
        (b'{"seed": 1', "is not valid JSON"),
    ],
)
def test_unreadable_run_json_and_configs_exit_2(tmp_path, capsys, content, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_bytes(content)
    (tmp_path / "config.json").write_bytes(content)
    for command in (
        ["report", str(run_dir)],
        ["resume", str(run_dir)],
        ["cost", "--config", str(tmp_path / "config.json")],
    ):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "internal error" not in err, (command, err)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["settings"].pop("study_name"), "lacks the key 'settings.study_name'"),
        (lambda d: d["settings"].update(objectives="rank"), "'settings.objectives' must be a list"),
        (lambda d: d["settings"].update(flops_budget="300M"), "'settings.flops_budget' must be a positive"),
        (lambda d: d["settings"].update(storage=5), "'settings.storage' must be a storage URL"),
        (lambda d: d.pop("settings"), "lacks the key 'settings'"),
        (lambda d: d.update(format="rexsearch.run/9"), "is not a rexsearch.run/2 file"),
    ],
)
def test_damaged_run_json_is_one_sentence(tmp_path, capsys, edit, message):
    run = runfixture.make_run(tmp_path / "run")
    meta = run.path / "run.json"
    data = json.loads(meta.read_text())
    edit(data)
    meta.write_text(json.dumps(data))
    assert main(["report", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_resume_with_wrong_typed_settings_is_refused(tmp_path, capsys):
    run_dir = _make_resumable(tmp_path / "run")
    data = json.loads((run_dir / "run.json").read_text())
    data["settings"]["colour"] = 1
    (run_dir / "run.json").write_text(json.dumps(data))
    assert main(["resume", str(run_dir)]) == 2
    assert "does not know (colour)" in capsys.readouterr().err
    data["settings"].pop("colour")
    data["settings"]["seed"] = "zero"  # refused when run.json is read, by every command
    (run_dir / "run.json").write_text(json.dumps(data))
    assert main(["resume", str(run_dir)]) == 2
    assert "'settings.seed' must be an integer" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_dir(tmp_path, capsys):
    run_dir = _make_resumable(tmp_path / "run")
    run_dir.chmod(0o555)
    try:
        assert main(["resume", str(run_dir), "--quiet"]) == 2
    finally:
        run_dir.chmod(0o755)
    assert "is not writable" in capsys.readouterr().err


def test_a_full_disk_names_the_disk(tmp_path, capsys, monkeypatch):
    from rexsearch.search import SearchSettings, start_run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("rexsearch.search.settings.write_run_json", full)
    settings = SearchSettings(run_dir=str(tmp_path / "run"), flops_budget=300_000_000, objectives=("rank",))
    with pytest.raises(UserError, match=r"no space left on the disk holding .*mounted at /"):
        start_run(settings, [])
    run = runfixture.make_run(tmp_path / "fake")
    monkeypatch.setattr("rexsearch.report.make_report", full)
    assert main(["report", str(run.path)]) == 2
    err = capsys.readouterr().err
    assert "no space left on the disk" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------- exports and training outputs
def test_export_never_targets_a_run_directory(tmp_path, capsys, monkeypatch):
    run = runfixture.make_run(tmp_path / "runs" / "run")
    other = runfixture.make_run(tmp_path / "other")
    before = _listing(run.path)
    cases = [
        (run.path, "is the run directory"),
        (run.path / "exported", "lies inside the run directory"),
        (other.path / "x", "lies inside the run directory"),
        (tmp_path / "runs", "holds the run directory"),
    ]
    for out, message in cases:
        assert main(["export", str(run.path), "--out", str(out), "--force"]) == 2, out
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    holder = tmp_path / "holder"
    shutil.copytree(other.path, holder / "nested" / "run")
    assert main(["export", str(run.path), "--out", str(holder), "--force"]) == 2
    assert "--force would delete it" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "holder")
    for out in (".", ".."):
        assert main(["export", str(run.path), "--out", out, "--force"]) == 2
        assert "is the current directory or a folder above it" in capsys.readouterr().err
    assert _listing(run.path) == before and (holder / "nested" / "run" / "run.json").is_file()
    assert main(["export", "--preset", "rexnet-0.9", "--out", ".", "--force"]) == 2


def test_train_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["train", "--preset", "rexnet-0.9", "--out", str(out), "--epochs", "1", "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "holds no earlier rexsearch train output" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------- secrets
def test_tunes_pickles_of_the_searcher_hold_no_password(tmp_path):
    from rexsearch.search.study import TrialDecoder
    from rexsearch.search.tune import StudySearcher
    from rexsearch.space import Budget, load_space
    from rexsearch.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    searcher = StudySearcher(
        TrialDecoder(load_space("rexnet"), Budget(300_000_000)),
        metric="rank",
        mode="max",
        study_name="s",
        storage=storage,
        objectives=("rank",),
        budget=Budget(300_000_000),
        pruned_ids=set(),
    )
    storage.url = f"postgresql+psycopg2://u:{SECRET}@db.example/x"  # as a PostgreSQL run's storage would
    assert SECRET.encode() not in pickle.dumps(searcher)  # tuner.pkl pickles the searcher
    searcher.save(str(tmp_path / "searcher-state.pkl"))
    assert SECRET.encode() not in (tmp_path / "searcher-state.pkl").read_bytes()
    assert pickle.loads(pickle.dumps(searcher))._objectives == ("rank",)


def test_dashboard_beyond_loopback_warns(tmp_path, capsys, monkeypatch):
    class FakeServer:
        server_port = 8080

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    monkeypatch.setattr("rexsearch.dashboard.dashboard_server", lambda *a, **kw: FakeServer())
    assert main(["dashboard", str(tmp_path), "--host", "0.0.0.0"]) == 0
    assert "no authentication" in capsys.readouterr().err
    for host in ("127.0.0.1", "localhost", "::1"):
        assert main(["dashboard", str(tmp_path), "--host", host]) == 0
        assert "no authentication" not in capsys.readouterr().err


def test_a_pt_with_a_custom_object_is_refused_plainly(tmp_path):
    from rexsearch.checkpoints import load_model

    path = tmp_path / "custom.pt"
    torch.save({"stem.conv.weight": torch.zeros(1), "extra": Path("/etc")}, path)
    with pytest.raises(UserError) as info:
        load_model(path, preset="rexnet-0.9")
    message = str(info.value)
    assert "objects other than tensors" in message and "will not unpickle" in message
    assert "weights_only=False" not in message


# ---------------------------------------------------------------------------- Ray: resume and signals
def _distinct_searched(run_dir: Path) -> tuple[int, int]:
    trials = [t for t in load_run(run_dir).open_study().get_trials() if not t.user_attrs.get("baseline")]
    keys = {tuple(sorted(t.params.items())) for t in trials if not t.user_attrs.get("rerun_of")}
    return len(keys), sum(1 for t in trials if not t.user_attrs.get("rerun_of"))


@pytest.mark.usefixtures("ray_session")
def test_resume_continues_the_sampler_and_the_run_moves(tmp_path):
    from rexsearch import search

    run_dir = tmp_path / "run"
    first = search.SearchSettings(
        run_dir=str(run_dir), flops_budget=200_000_000, trials=5, objectives=("rank",), cpus_per_trial=1,
        max_concurrent=1, rank_samples=8,
    )  # fmt: skip
    search.start_run(first, ["test"])
    assert search.execute(first).finished == 5
    second = search.SearchSettings(**{**first.to_dict(), "objectives": ("rank",), "trials": 10})
    assert search.execute(second).finished == 10  # the session that a resume after trial 5 runs
    distinct, searched = _distinct_searched(run_dir)
    assert searched == 8 and distinct == searched  # the second session proposed new configs
    assert json.loads((run_dir / "run.json").read_text())["settings"]["storage"] is None  # its own study.db
    moved = tmp_path / "moved"
    run_dir.rename(moved)  # a moved run reads its own study (report, export, resume)
    assert len(load_run(moved).open_study().trials) == 10
    assert search.settings_from_run(load_run(moved)).storage_url() == f"sqlite:///{moved.resolve()}/study.db"


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import functools, sys, time
    from rexsearch import search
    from rexsearch.cli import main

    def slow_trial(tune_config, split=None, job=None):
        time.sleep(1.5)  # a window to be stopped while trials run
        search.trial_function(tune_config, split, job)

    search.execute = functools.partial(search.execute, trainable_fn=slow_trial)
    sys.exit(main(["run", "--flops-budget", "300M", "--objectives", "rank", "--trials", "12",
                   "--cpus-per-trial", "1", "--max-concurrent", "2", "--run-dir", sys.argv[1], "--quiet"]))
    """
)


@pytest.mark.usefixtures("ray_session")
def test_sigterm_stops_a_run_like_ctrl_c(tmp_path):
    import ray

    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}

    def ready() -> bool:
        counts = study_counts(run_dir / "study.db")
        return counts.get("COMPLETE", 0) >= 1 and counts.get("RUNNING", 0) >= 1

    code, err = sigterm_when(SIGTERM_SCRIPT, [str(run_dir)], ready, env, "the run")
    assert code in (143, 130), err[-2000:]
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-2000:]
    assert "rexsearch resume" in err
    trials = load_run(run_dir).open_study().get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert any(t.state == TrialState.COMPLETE for t in trials)
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped and all(t.user_attrs.get("interrupted") for t in stopped)
    RunLock.acquire(run_dir).release()  # the lock went with the driver


OWN_RAY_SCRIPT = textwrap.dedent(
    """
    import json, time
    import ray
    from rexsearch import search

    assert search.ensure_ray(None)  # a local Ray of its own
    node = ray._private.worker._global_node
    pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
    print(json.dumps(pids), flush=True)
    time.sleep(300)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_driver_leaves_no_ray_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", OWN_RAY_SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    pids: list[int] = []
    try:
        pids = json.loads(proc.stdout.readline())
        assert pids and all(_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for pid in left:  # stop exactly what this test started before failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"Ray processes of the killed driver still running: {left}"


def test_a_new_run_cannot_store_its_study_in_another_runs_folder(tmp_path, capsys):
    other = runfixture.make_run(tmp_path / "a")
    trials = len(other.open_study().trials)
    run_dir = tmp_path / "b"
    storage = f"sqlite:///{other.path / 'study.db'}"
    args = ["run", "--flops-budget", "300M", "--objectives", "rank", "--storage", storage]
    assert main([*args, "--study-name", "b", "--run-dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"belongs to the run {other.path}" in err and err.count("\n") == 1, err
    assert not (run_dir / "run.json").exists()
    assert len(other.open_study().trials) == trials


@pytest.mark.parametrize(
    ("command", "purpose"),
    [
        (["train", "--preset", "rexnet-1.0", "--epochs", "1", "--dataset", "fashion-mnist"], "train it"),
        (["latency", "--preset", "rexnet-1.0"], "time it"),
        (["latency-table", "build", "--quick"], "time it for a latency table"),
        (["run", "--flops-budget", "100M", "--dataset", "fashion-mnist"], "train the proxies of this budget"),
    ],
)
def test_every_command_that_runs_a_network_checks_its_memory_first(
    tmp_path, capsys, monkeypatch, command, purpose
):
    """Under a memory cap every command that builds or runs a network refuses (exit 2) with the
    estimate and the memory available, before it allocates anything or starts Ray."""
    import rexsearch.cost

    monkeypatch.setattr(rexsearch.cost, "available_memory", lambda: 1_000_000)  # 1 MB left
    out, table = tmp_path / "out", tmp_path / "table.json"
    args = {
        "train": ["--out", str(out)],
        "latency-table": ["--out", str(table)],
        "run": ["--run-dir", str(out)],
    }
    assert main([*command, *args.get(command[0], [])]) == 2
    err = capsys.readouterr().err
    assert f"the network is too large to {purpose}" in err and "than the 1.0 MB of memory available" in err, (
        err
    )
    assert err.count("\n") == 1 and not out.exists() and not table.exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("settings", "x", "'settings' must be an object"),
        ("epochs", "x", "'settings.epochs' must be a non-negative integer"),
        ("seed", "abc", "'settings.seed' must be an integer in [0, 2^32)"),
        ("latency_table", 5, "'latency_table' must be an object"),
        ("command", 5, "'command' must be a list"),
        ("versions", 5, "'versions' must be an object"),
        ("data", "x", "'data' must be an object"),
        ("objectives", ["bogus"], "'settings.objectives' must be a list of distinct names from accuracy"),
        ("objectives", ["rank", "rank"], "'settings.objectives' must be a list of distinct names"),
        ("sampler", "annealing", "'settings.sampler' must be one of tpe, nsga2, gp, random"),
        ("latency_budget_ms", "fast", "'settings.latency_budget_ms' must be a positive number"),
        # well-formed, but not what the study records: a rank run's values are not accuracies
        ("objectives", ["accuracy"], "names the objectives accuracy but its study records accuracy,rank"),
    ],
)
def test_wrong_typed_run_json_fields_are_one_sentence(tmp_path, capsys, key, value, message):
    run = runfixture.make_run(tmp_path / "run")
    meta = run.path / "run.json"
    data = json.loads(meta.read_text())
    settings_keys = ("epochs", "seed", "objectives", "sampler", "latency_budget_ms")
    (data["settings"] if key in settings_keys else data)[key] = value
    meta.write_text(json.dumps(data))
    for command in (["report", str(run.path)], ["export", str(run.path), "--out", str(tmp_path / "x")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "internal error" not in err, err


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            ["export", "--preset", "rexnet-1.0", "--out", "OUT", "--seed", str(2**70)],
            "--seed: expected an integer seed",
        ),
        (["confirm", "RUN", "--seeds", "1000000000"], "--seeds: expected an integer in 1..100"),
        (["confirm", "RUN", "--top", "0"], "--top: expected an integer in 1..100"),
        (["space", "SPACE", "--flops-budget", "100M"], "is not UTF-8 text"),
    ],
)
def test_absurd_numbers_and_unreadable_spaces_are_usage_errors(tmp_path, capsys, command, message):
    space = tmp_path / "space.yaml"
    space.write_bytes(b"name: \xff\n")
    words = [
        {"OUT": str(tmp_path / "out"), "RUN": str(tmp_path), "SPACE": str(space)}.get(w, w) for w in command
    ]
    try:
        code = main(words)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err and "Traceback" not in err, err
