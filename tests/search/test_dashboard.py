"""`rexsearch dashboard`: optuna-dashboard's HTTP API on a run's storage, and its errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import optuna
import pytest
from support import runfixture

from rexsearch.cli import main
from rexsearch.dashboard import dashboard_server
from rexsearch.errors import UserError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runfixture.make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture
def server(run):
    srv = dashboard_server(run.path, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_api_lists_the_study_with_trials_attributes_and_objective_names(run, server):
    summaries = _get(f"{server}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [run.study_name]
    detail = _get(f"{server}/api/studies/{summaries[0]['study_id']}")
    assert detail["objective_names"] == ["accuracy", "rank"]
    assert detail["directions"] == ["maximize", "maximize"]
    trials = {t["number"]: t for t in detail["trials"]}
    assert len(trials) == len(run.open_study().trials)
    attrs = {a["key"]: a["value"] for a in trials[2]["user_attrs"]}
    for key in ("config", "macs", "params", "rank", "rank_per_layer", "accuracy_curve", "fvcore_macs"):
        assert key in attrs, key
    # optuna-dashboard cuts attribute values at 1024 characters; the config JSON is longer
    assert attrs["config"].startswith('{"format": "rexsearch.config/1"')
    assert [v["step"] for v in trials[2]["intermediate_values"]] == [0, 1, 2]
    assert trials[18]["constraints"][0] > 0  # infeasible: over the MACs budget
    assert trials[2]["constraints"][0] <= 0
    assert trials[13]["state"] == "Fail"
    assert trials[8]["state"] == "Pruned"
    assert dict((a["key"], a["value"]) for a in trials[0]["user_attrs"])["baseline"] == "rexnet-linear"


def test_busy_port_is_a_user_error(run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match="already in use"):
            dashboard_server(run.path, "127.0.0.1", port)
        assert main(["dashboard", str(run.path), "--port", str(port)]) == 2
    assert f"port {port}" in capsys.readouterr().err


def test_missing_run_exits_2(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_cli_serves_until_ctrl_c(run):
    code = "import sys; from rexsearch.cli import main; sys.exit(main(sys.argv[1:]))"
    with subprocess.Popen(
        [sys.executable, "-c", code, "dashboard", str(run.path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            line = proc.stdout.readline()
            assert "http://127.0.0.1:" in line, line + proc.stderr.read()
            url = line.split("http://", 1)[1].split()[0].rstrip("/")
            assert _get(f"http://{url}/api/studies")["study_summaries"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def _request(base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None):
    """One request with the headers exactly as given (Host included), answered status and body."""
    import http.client

    netloc = base.split("//", 1)[1]
    host, port = netloc.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in {**headers, "Content-Length": str(len(body or b""))}.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture
def edit_server(run):
    srv = dashboard_server(run.path, "127.0.0.1", 0, allow_edits=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def _study_id(base: str) -> int:
    return _get(f"{base}/api/studies")["study_summaries"][0]["study_id"]


def test_forged_host_cannot_read_or_delete_the_study(run, edit_server):
    """DNS rebinding: a page on evil.example resolves to 127.0.0.1 and sends its own name as Host."""
    sid = _study_id(edit_server)
    port = edit_server.rsplit(":", 1)[1]
    forged = {"Host": f"evil.example:{port}"}
    status, body = _request(edit_server, "DELETE", f"/api/studies/{sid}", forged, b"{}")
    assert status == 403 and b"Host" in body
    status, _ = _request(edit_server, "GET", "/api/studies", forged)
    assert status == 403
    status, _ = _request(edit_server, "GET", "/api/studies", {"Host": "127.0.0.1:1"})  # another port
    assert status == 403
    assert optuna.get_all_study_names(run.open_storage()) == [run.study_name]
    assert len(run.open_study().trials) > 0


def test_dashboard_is_read_only_by_default(run, server):
    sid = _study_id(server)
    host = {"Host": server.split("//", 1)[1]}
    status, body = _request(server, "DELETE", f"/api/studies/{sid}", host, b"{}")
    assert status == 403 and b"--allow-edits" in body
    status, _ = _request(server, "POST", f"/api/studies/{sid}/rename", host, b'{"study_name": "x"}')
    assert status == 403
    assert _get(f"{server}/api/studies")["study_summaries"][0]["study_name"] == run.study_name
    # reads under every loopback name are served
    port = server.rsplit(":", 1)[1]
    for name in ("127.0.0.1", "localhost"):
        status, _ = _request(server, "GET", "/api/studies", {"Host": f"{name}:{port}"})
        assert status == 200, name


def test_edits_need_the_dashboards_own_origin(run, edit_server):
    sid = _study_id(edit_server)
    netloc = edit_server.split("//", 1)[1]
    note = json.dumps({"version": 1, "body": "seen"}).encode()
    headers = {"Host": netloc, "Content-Type": "application/json"}
    evil = {**headers, "Origin": "https://evil.example"}
    status, _ = _request(edit_server, "PUT", f"/api/studies/{sid}/note", evil, note)
    assert status == 403
    status, _ = _request(
        edit_server, "PUT", f"/api/studies/{sid}/note", {**headers, "Origin": edit_server}, note
    )
    assert status == 204
