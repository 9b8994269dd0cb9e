"""Cheap imports: `rexsearch --version`/`--help` and `import rexsearch` load neither torch, Ray nor plotly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "plotly")

_PROBE = """
import contextlib, io, json, sys
from rexsearch.cli import main
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out):
        code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def _probe(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [("--version",), ("--help",), ("run", "--help"), ("presets",)])
def test_cli_answers_without_heavy_imports(argv):
    result = _probe(*argv)
    assert result["code"] == 0
    loaded = {m.split(".")[0] for m in result["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    if argv == ("--version",):
        assert result["out"].strip() == "rexsearch 0.1.0"
    if argv == ("--help",):  # every command is listed although only the parser's module was imported
        for command in ("run", "resume", "report", "export", "train", "rank-study"):
            assert command in result["out"]


def test_import_rexsearch_is_cheap_and_load_model_is_lazy():
    code = (
        "import sys, rexsearch; before = {m.split('.')[0] for m in sys.modules}; "
        "f = rexsearch.load_model; print(sorted(before & {'torch', 'ray', 'plotly'}), callable(f))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[] True"


def test_every_command_parses_with_the_full_parser():
    from rexsearch.cli import COMMANDS, build_parser

    parser = build_parser(full=True)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0
