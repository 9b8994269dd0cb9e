"""The package as installed: the wheel carries the shipped spaces, and runs without the source tree.

The wheel is built from a copy of this tree (pyproject.toml, README.md, rexsearch/) and
installed into a scratch virtual environment that sees the test environment's packages
(torch, Ray, ...) but not the source tree: the test environment's site directories are put
on the scratch environment's path as plain directories, so the editable install's import
hook there is never loaded, and every command runs from a scratch folder with PYTHONPATH
unset. Each test asserts that ``rexsearch`` was imported from the scratch environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

import rexsearch
from rexsearch.space import CALIBRATION_SPACES, SPACES_DIR, load_space, shipped_space_names

REPO = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without PYTHONPATH (nor a Ray address to join), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    return {**env, **extra}


def _run(args: list[str], cwd: Path, timeout: float, **extra: str) -> subprocess.CompletedProcess:
    """Run ``args`` in its own process group; on a timeout, stop that group (and only it)."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=_clean_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(args)} ran over {timeout} s: {err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _check(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"{' '.join(done.args)} exited {done.returncode}: {done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scratch environment with the wheel built from this tree installed: its python, its
    ``rexsearch`` script and a scratch working folder outside the repository."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "rexsearch", src / "rexsearch", ignore=shutil.ignore_patterns("__pycache__"))
    work = root / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(root / "dist")]
    _check(_run([*build, str(src)], work, 300))
    (wheel,) = (root / "dist").glob("rexsearch-*.whl")
    env = root / "env"
    _check(
        _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env)], work, 120)
    )
    python = env / "bin" / "python"
    _check(
        _run(
            [*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)], work, 300
        )
    )
    # A virtual environment's system site is its base interpreter's, not the test environment's:
    # its site directories go on the path as plain directories (their own .pth files, the
    # editable install's import hook among them, are not read).
    site = Path(
        _check(
            _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, 60)
        ).strip()
    )
    here = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "rexsearch_test_environment.pth").write_text("".join(f"{p}\n" for p in here))
    return {"env": env, "python": python, "script": env / "bin" / "rexsearch", "work": work}


def _imported_from(installed: dict[str, Path]) -> Path:
    code = "import rexsearch.space; print(rexsearch.__file__); print(rexsearch.space.SPACES_DIR)"
    out = _check(_run([str(installed["python"]), "-c", code], installed["work"], 120)).splitlines()
    module, spaces = Path(out[0]), Path(out[1])
    assert installed["env"] in module.parents and installed["env"] in spaces.parents, out
    assert REPO not in module.parents
    return spaces


def test_installed_wheel_finds_its_shipped_spaces(installed):
    spaces = _imported_from(installed)
    assert sorted(p.stem for p in spaces.glob("*.yaml")) == shipped_space_names()
    out = _check(
        _run(
            [str(installed["script"]), "space", "rexnet", "--flops-budget", "400M", "--sample", "3"],
            installed["work"],
            300,
        )
    )
    assert out.startswith("rexnet: 3 candidates in [388,000,000, 400,000,000] MACs"), out


@pytest.mark.slow
def test_installed_wheel_runs_a_data_free_search(installed):
    """A rank-only search (no data set) on a local Ray of its own: Ray keeps its sockets and
    session under a temporary folder of this test, so it neither joins nor touches another
    Ray on this machine, and the run stops the Ray it started."""
    _imported_from(installed)
    run_dir = installed["work"] / "run"
    with tempfile.TemporaryDirectory(prefix="rxray") as ray_tmp:  # short: Ray's socket paths
        argv = [str(installed["script"]), "run", "--flops-budget", "400M", "--objectives", "rank"]
        argv += [
            "--trials",
            "2",
            "--cpus-per-trial",
            "1",
            "--seed",
            "0",
            "--run-dir",
            str(run_dir),
            "--quiet",
        ]
        _check(_run(argv, installed["work"], 600, RAY_TMPDIR=ray_tmp))
    meta = json.loads((run_dir / "run.json").read_text())
    assert Path(meta["space"]["path"]) == Path(meta["space"]["path"]).resolve()
    assert installed["env"] in Path(meta["space"]["path"]).parents
    rows = (run_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",COMPLETE," in r for r in rows[1:]), rows


def test_shipped_spaces_are_package_data():
    package = Path(rexsearch.__file__).resolve().parent
    assert package / "space" / "shipped" == SPACES_DIR
    assert shipped_space_names() and all(load_space(name).path for name in shipped_space_names())
    for path in SPACES_DIR.glob("*.yaml"):
        assert path.resolve().parent == SPACES_DIR
    # the calibration of every latency table draws from shipped spaces it names, in this order
    assert len(set(CALIBRATION_SPACES)) == len(CALIBRATION_SPACES)
    assert set(CALIBRATION_SPACES) <= set(shipped_space_names())
    # one source of truth: the top-level folder points at the package, holding no space itself
    top = REPO / "search_spaces"
    if top.is_dir():
        assert [p.name for p in top.iterdir()] == ["README.md"]
        assert "rexsearch/space/shipped/" in (top / "README.md").read_text()


def test_package_data_lists_the_shipped_spaces():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["rexsearch"]
    package = Path(rexsearch.__file__).resolve().parent
    listed = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(SPACES_DIR.glob("*.yaml")) <= listed
