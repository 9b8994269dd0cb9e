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

import pytest
import runfixture

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
