"""The storage opener without a database server: URL forms, masking, passwords, one-line errors.

Tests that need a PostgreSQL server are in test_postgres.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest
from support.drivers import closed_port, storage_run_args

from rexsearch.cli import main
from rexsearch.errors import UserError
from rexsearch.storage import mask_passwords, mask_url, open_storage

SECRET = "s3cret-Pa55word"


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
    port = closed_port()
    run_dir = tmp_path / "run"
    started = time.monotonic()
    code = main(storage_run_args(run_dir, f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:{port}/db"))
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
    port = closed_port()
    run_dir = tmp_path / "run"
    ray_tmp = tmp_path / "ray-tmp"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rexsearch.cli",
            *storage_run_args(run_dir, f"postgresql+psycopg2://u:p@127.0.0.1:{port}/db"),
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
    code = main(storage_run_args(tmp_path / "run", f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:5432/db"))
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
    assert main(storage_run_args(tmp_path / "run", url)) == 2
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


def test_masking_covers_every_url_form():
    from rexsearch.storage import mask_passwords, mask_url, strip_password

    forms = [
        f"postgresql+psycopg2://u:{SECRET}@db.example:5432/x?sslmode=require",
        f"postgresql+psycopg2://u:{SECRET}@db.example/x",
        f"postgresql+psycopg2://u@db.example/x?password={SECRET}&port=5433",
        f"postgresql+psycopg2:///x?host=db.example&port=5433&password={SECRET}",
        f"postgresql+psycopg2://u:p@ss{SECRET}@db.example/x",
        # the key percent-encoded (SQLAlchemy decodes it, so it authenticates), or in + form
        f"postgresql+psycopg2://u@db.example/x?pass%77ord={SECRET}&port=5433",
        f"postgresql+psycopg2://u@db.example/x?%70%61%73%73%77%6F%72%64={SECRET}",
        f"postgresql+psycopg2://u@db.example/x?sslmode=require&PASSWORD+={SECRET}",
        # a libpq dsn string handed through the query
        f"postgresql+psycopg2://u@db.example/x?dsn=host%3Ddb%20password%3D{SECRET}",
        # SQLAlchemy reads a password holding ? or /, and a user name holding @
        f"postgresql+psycopg2://u:pa?ss{SECRET}@db.example/x",
        f"postgresql+psycopg2://u:pa/ss{SECRET}@db.example/x",
        f"postgresql+psycopg2://me@corp:{SECRET}@db.example/x",
    ]
    for url in forms:
        assert SECRET not in mask_url(url), url
        assert SECRET not in strip_password(url) and "p@ss" not in strip_password(url), url
        assert "db.example" in mask_url(url)
    assert mask_url("sqlite:////tmp/a@b/study.db") == "sqlite:////tmp/a@b/study.db"
    line = f"rexsearch run --storage {forms[2]} --trials 3"
    assert SECRET not in mask_passwords(line) and "--trials 3" in mask_passwords(line)
    line = f"rexsearch run --storage {forms[5]} --trials 3"
    assert SECRET not in mask_passwords(line) and "--trials 3" in mask_passwords(line)
    # what is not a password stays as it was
    assert strip_password(forms[5]) == "postgresql+psycopg2://u@db.example/x?port=5433"
    assert mask_url(forms[7]) == "postgresql+psycopg2://u@db.example/x?sslmode=require&PASSWORD+=***"


def test_password_comes_from_the_environment(monkeypatch):
    from sqlalchemy.engine import make_url

    from rexsearch.storage import PASSWORD_ENV, with_password

    url = "postgresql+psycopg2://bob@db.example:5432/x"
    assert with_password(url) == url
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    assert make_url(with_password(url)).password == SECRET
    given = "postgresql+psycopg2://bob:other@db.example:5432/x"
    assert with_password(given) == given and with_password("sqlite:///a.db") == "sqlite:///a.db"


def test_the_port_in_the_query_is_named(monkeypatch, capsys):
    from rexsearch.storage import open_storage

    pytest.importorskip("psycopg2")
    with pytest.raises(UserError) as info:
        open_storage(f"postgresql+psycopg2://u@/x?host=127.0.0.1&port=9&password={SECRET}")
    assert "127.0.0.1:9" in str(info.value) and SECRET not in str(info.value)
