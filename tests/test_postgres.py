"""PostgreSQL storage: a real search against a real server, read back by report and dashboard;
one-line errors (exit 2) for an unreachable server, a wrong password, a missing driver.

The server is ``$REXSEARCH_TEST_POSTGRES_URL`` when set (``.ci/run`` starts one), else one
started here with tests/pgserver.py when PostgreSQL's binaries are installed, else the
tests that need a server are skipped.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import optuna
import pgserver
import pytest
from optuna.trial import TrialState

from rexsearch.cli import main
from rexsearch.errors import UserError
from rexsearch.storage import mask_passwords, mask_url, open_storage

SECRET = "s3cret-Pa55word"


@pytest.fixture(scope="session")
def postgres_url():
    """The SQLAlchemy URL of a running PostgreSQL server (see the module docstring)."""
    url = os.environ.get("REXSEARCH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed: pip install 'rexsearch[postgres]'")
    if not pgserver.available():
        pytest.skip(
            "no PostgreSQL server: set REXSEARCH_TEST_POSTGRES_URL or install PostgreSQL 15 "
            "(initdb, pg_ctl under /usr/lib/postgresql/15/bin)"
        )
    server = pgserver.PostgresServer.start()
    try:
        yield server.url
    finally:
        server.remove()


def _with_password(url: str, password: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=password).render_as_string(hide_password=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_args(run_dir, storage: str, study: str = "rexsearch") -> list[str]:
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


def test_new_run_refuses_a_study_name_already_in_the_database(pg_run, postgres_url, tmp_path, capsys):
    _, study_name = pg_run
    run_dir = tmp_path / "second"
    assert main(_run_args(run_dir, postgres_url, study_name)) == 2
    err = capsys.readouterr().err
    assert f"the study {study_name!r} already exists" in err and "choose another --study-name" in err
    assert "Traceback" not in err and not run_dir.exists()
    assert len(optuna.load_study(study_name=study_name, storage=postgres_url).trials) == 3


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


# ---------------------------------------------------------------------------- a real search
@pytest.fixture(scope="module")
def pg_run(postgres_url, ray_session, tmp_path_factory):
    """A 3-trial rank-only search whose study lives in PostgreSQL: (run_dir, study name)."""
    run_dir = tmp_path_factory.mktemp("pg") / "run"
    study = f"pgtest-{uuid.uuid4().hex[:10]}"
    assert main(_run_args(run_dir, postgres_url, study)) == 0
    return run_dir, study


def test_search_stores_its_study_in_postgres(pg_run, postgres_url):
    run_dir, study_name = pg_run
    assert not (run_dir / "study.db").exists()
    assert json.loads((run_dir / "run.json").read_text())["storage"] == postgres_url
    study = optuna.load_study(study_name=study_name, storage=open_storage(postgres_url))
    trials = study.get_trials()
    assert len(trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("error") for t in trials]
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["rexnet-linear", "mobilenetv2-stagewise"]
    for t in trials:
        assert {"config", "macs", "params", "fvcore_macs", "rank", "rank_per_layer"} <= set(t.user_attrs)
        assert t.values == [pytest.approx(t.user_attrs["rank"])]
    assert study.metric_names == ["rank"]


def test_report_reads_the_study_back_from_postgres(pg_run, postgres_url, capsys):
    run_dir, study_name = pg_run
    (run_dir / "trials.csv").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "3 trials" in capsys.readouterr().out
    with open(run_dir / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert [float(r["rank"]) for r in rows] == pytest.approx([t.user_attrs["rank"] for t in study.trials])
    html = (run_dir / "report.html").read_text()
    password = _password(postgres_url)
    assert password not in html  # the command line in the report is masked


def _password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def test_dashboard_serves_the_study_from_postgres(pg_run):
    from rexsearch.dashboard import dashboard_server

    run_dir, study_name = pg_run
    srv = dashboard_server(run_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{srv.server_port}"
        summaries = {s["study_name"]: s for s in _get(f"{base}/api/studies")["study_summaries"]}
        detail = _get(f"{base}/api/studies/{summaries[study_name]['study_id']}")
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)
    assert detail["objective_names"] == ["rank"]
    trials = sorted(detail["trials"], key=lambda t: t["number"])
    assert [t["state"] for t in trials] == ["Complete"] * 3
    attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in trials]
    assert [a.get("baseline") for a in attrs[:2]] == ["rexnet-linear", "mobilenetv2-stagewise"]
    assert all({"config", "macs", "params", "rank"} <= set(a) for a in attrs)


def test_resume_and_export_read_postgres(pg_run, postgres_url, tmp_path, capsys):
    run_dir, study_name = pg_run
    assert main(["resume", str(run_dir), "--quiet"]) == 0  # finished: nothing rerun, nothing lost
    assert len(optuna.load_study(study_name=study_name, storage=postgres_url).trials) == 3
    out = tmp_path / "best"
    assert main(["export", str(run_dir), "--trial", "best", "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists()
    assert _password(postgres_url) not in capsys.readouterr().err


def test_commands_on_a_run_whose_server_is_gone_exit_2(pg_run, tmp_path, capsys):
    run_dir, _ = pg_run
    moved = tmp_path / "run"
    moved.mkdir()
    meta = json.loads((run_dir / "run.json").read_text())
    port = _closed_port()
    meta["storage"] = f"postgresql+psycopg2://rexsearch:{SECRET}@127.0.0.1:{port}/rexsearch"
    (moved / "run.json").write_text(json.dumps(meta))
    for argv in (
        ["report", str(moved)],
        ["dashboard", str(moved), "--port", "0"],
        ["export", str(moved), "--out", str(tmp_path / "out")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"cannot reach the database server at 127.0.0.1:{port}" in err, err
        assert SECRET not in err


def test_wrong_password_exits_2_without_the_password(postgres_url, tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    wrong = "Wr0ng-" + SECRET
    run_dir = tmp_path / "run"
    assert main(_run_args(run_dir, _with_password(postgres_url, wrong))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "authentication failed for user" in err and "wrong user name or password" in err, err
    assert wrong not in err and _password(postgres_url) not in err
    assert ":***@" in err
    assert not run_dir.exists()


def test_missing_database_exits_2(postgres_url, tmp_path, capsys, monkeypatch):
    from sqlalchemy.engine import make_url

    _no_ray(monkeypatch)
    url = make_url(postgres_url).set(database="no_such_db").render_as_string(hide_password=False)
    assert main(_run_args(tmp_path / "run", url)) == 2
    err = capsys.readouterr().err
    assert "the database 'no_such_db' does not exist" in err and err.count("\n") == 1, err
    assert _password(postgres_url) not in err


# ---------------------------------------------------------------------------- no server needed
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command gets as far as data, Ray or the search."""
    from rexsearch import search

    def forbidden(*args, **kwargs):
        raise AssertionError("the storage must be refused before data, Ray or trials")

    for name in ("load_split", "ensure_ray", "start_run", "execute"):
        monkeypatch.setattr(search, name, forbidden)


def test_unreachable_server_exits_2_before_ray(tmp_path, capsys, monkeypatch):
    pytest.importorskip("psycopg2")
    _no_ray(monkeypatch)
    port = _closed_port()
    run_dir = tmp_path / "run"
    started = time.monotonic()
    code = main(_run_args(run_dir, f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:{port}/db"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.monotonic() - started < 5
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot reach the database server at 127.0.0.1:{port}" in err
    assert "must be running and reachable" in err and SECRET not in err
    assert not run_dir.exists()


def test_unreachable_server_cli_process(tmp_path):
    """The real command: exit 2, one line on stderr, no Ray started, nothing written."""
    pytest.importorskip("psycopg2")
    port = _closed_port()
    run_dir = tmp_path / "run"
    ray_tmp = tmp_path / "ray-tmp"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rexsearch.cli",
            *_run_args(run_dir, f"postgresql+psycopg2://u:p@127.0.0.1:{port}/db"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"rexsearch: error: cannot reach the database server at 127.0.0.1:{port}")
    assert ":p@" not in out.stderr and out.stdout == ""
    assert not run_dir.exists() and not ray_tmp.exists()


def test_missing_driver_names_the_extra(tmp_path, capsys, monkeypatch):
    _no_ray(monkeypatch)
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` raises ImportError
    code = main(_run_args(tmp_path / "run", f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:5432/db"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "needs the PostgreSQL driver psycopg2, which is not installed" in err
    assert "pip install 'rexsearch[postgres]'" in err and SECRET not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "malformed storage URL 'not a url'"),
        (f"postgres://u:{SECRET}@127.0.0.1/db", "SQLAlchemy spells it postgresql"),
        (f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:notaport/db", "malformed storage URL"),
    ],
)
def test_malformed_url_exits_2(tmp_path, capsys, monkeypatch, url, message):
    _no_ray(monkeypatch)
    assert main(_run_args(tmp_path / "run", url)) == 2
    err = capsys.readouterr().err
    assert message in err and SECRET not in err and err.count("\n") == 1, err


def test_open_storage_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cannot open the SQLite storage"):
        open_storage(f"sqlite:///{tmp_path}/missing-folder/study.db")
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")  # SQLite as before
    assert optuna.create_study(storage=storage, study_name="s").study_name == "s"


def test_masking():
    url = f"postgresql+psycopg2://u:{SECRET}@db.example:5432/x?sslmode=require"
    assert mask_url(url) == "postgresql+psycopg2://u:***@db.example:5432/x?sslmode=require"
    assert mask_url("sqlite:////tmp/a@b/study.db") == "sqlite:////tmp/a@b/study.db"
    line = f"rexsearch run --storage {url} --trials 3"
    assert SECRET not in mask_passwords(line) and "--trials 3" in mask_passwords(line)
