"""PostgreSQL storage: a real search against a real server, read back by report and dashboard;
one-line errors (exit 2) for an unreachable server, a wrong password, a missing driver.

The server is ``$REXSEARCH_TEST_POSTGRES_URL`` when set (``.ci/run`` starts one), else one
started here with tests/support/pgserver.py when PostgreSQL's binaries are installed, else the
tests that need a server are skipped.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import urllib.request
import uuid

import optuna
import pytest
from optuna.trial import TrialState
from support import pgserver
from support.drivers import closed_port, storage_run_args

from rexsearch.cli import main
from rexsearch.storage import open_storage

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


def test_new_run_refuses_a_study_name_already_in_the_database(pg_run, postgres_url, tmp_path, capsys):
    _, study_name = pg_run
    run_dir = tmp_path / "second"
    assert main(storage_run_args(run_dir, postgres_url, study_name)) == 2
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
    assert main(storage_run_args(run_dir, postgres_url, study)) == 0
    return run_dir, study


@pytest.fixture
def password_env(postgres_url, monkeypatch):
    """The server's password where resume, report, export and dashboard take it from."""
    from rexsearch.storage import PASSWORD_ENV

    monkeypatch.setenv(PASSWORD_ENV, _password(postgres_url))


def test_search_stores_its_study_in_postgres(pg_run, postgres_url):
    from rexsearch.storage import strip_password

    run_dir, study_name = pg_run
    assert not (run_dir / "study.db").exists()
    assert json.loads((run_dir / "run.json").read_text())["settings"]["storage"] == strip_password(
        postgres_url
    )
    password = _password(postgres_url).encode()
    leaks = [str(p) for p in run_dir.rglob("*") if p.is_file() and password in p.read_bytes()]
    assert not leaks  # not in run.json, nor in Ray Tune's tuner.pkl and searcher-state-*.pkl
    study = optuna.load_study(study_name=study_name, storage=open_storage(postgres_url))
    trials = study.get_trials()
    assert len(trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("error") for t in trials]
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["rexnet-linear", "mobilenetv2-stagewise"]
    for t in trials:
        assert {"config", "macs", "params", "fvcore_macs", "rank", "rank_per_layer"} <= set(t.user_attrs)
        assert t.values == [pytest.approx(t.user_attrs["rank"])]
    assert study.metric_names == ["rank"]


@pytest.mark.usefixtures("password_env")
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


def test_percent_encoded_password_key_authenticates_but_is_never_written(postgres_url, ray_session, tmp_path):
    """``?pass%77ord=`` is ``?password=`` to SQLAlchemy: the run works and no file holds it."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    password = url.password
    assert password, "the test server's URL carries a password"
    bare = url.set(password=None).render_as_string(hide_password=False)
    encoded = f"{bare}{'&' if '?' in bare else '?'}pass%77ord={password}"
    run_dir = tmp_path / "run"
    assert main(storage_run_args(run_dir, encoded, f"pgtest-{uuid.uuid4().hex[:10]}")) == 0
    with pytest.MonkeyPatch.context() as mp:
        from rexsearch.storage import PASSWORD_ENV

        mp.setenv(PASSWORD_ENV, password)
        assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").exists()
    leaks = [str(p) for p in run_dir.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert not leaks


def _password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).password


@pytest.mark.usefixtures("password_env")
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


def test_resume_without_the_password_says_where_it_comes_from(pg_run, capsys, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    run_dir, _ = pg_run
    assert main(["report", str(run_dir)]) == 2
    assert "PGPASSWORD" in capsys.readouterr().err


@pytest.mark.usefixtures("password_env")
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
    port = closed_port()
    meta["settings"]["storage"] = f"postgresql+psycopg2://rexsearch:{SECRET}@127.0.0.1:{port}/rexsearch"
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
    assert main(storage_run_args(run_dir, _with_password(postgres_url, wrong))) == 2
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
    assert main(storage_run_args(tmp_path / "run", url)) == 2
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
