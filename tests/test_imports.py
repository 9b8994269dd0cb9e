"""Imports: cheap ones, and the boundaries between modules.

`rexsearch --version`/`--help` and `import rexsearch` load neither torch, Ray nor plotly; no
module of rexsearch/, benchmarks/ or tests/ uses another module's underscore names; and
rexsearch/space/ never imports rexsearch.latency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

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


def _python(code: str, *argv: str) -> str:
    """The standard output of ``code`` run by a fresh interpreter (stripped)."""
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def _probe(*argv: str) -> dict:
    return json.loads(_python(_PROBE, *argv).splitlines()[-1])


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
    assert _python(code) == "[] True"


def test_every_command_parses_with_the_full_parser():
    from rexsearch.cli import COMMANDS, build_parser

    parser = build_parser(full=True)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0


# ---------------------------------------------------------------------------- module boundaries
REPO = Path(__file__).resolve().parent.parent
#: The folders whose modules may use only each other's public names.
CHECKED = ("rexsearch", "benchmarks", "tests")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def _project_module(name: str, local: set[str]) -> bool:
    """Whether ``name`` is a module of this project: rexsearch's, or a script or package beside
    the tests or the benchmarks (which they import by its bare name: ``support``, tests/support/)."""
    top = name.split(".")[0]
    return top == "rexsearch" or top in local


def _module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_uses(source: str, here: str, local: set[str]) -> list[tuple[int, str]]:
    """Every use in ``source`` (the module ``here``) of another module's underscore name, by
    line: ``from m import _x``, ``m._x`` on an imported module, ``setattr(m, "_x", ...)``
    (monkeypatch's too) and ``"rexsearch.m._x"`` targets, and a private module imported from
    outside its package."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    modules: dict[str, str] = {}

    def private_module(name: str) -> bool:
        parts = name.split(".")
        for i, part in enumerate(parts):
            package = ".".join(parts[:i])
            if _private(part) and not (here == package or here.startswith(package + ".")):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _project_module(alias.name, local):
                    if private_module(alias.name):
                        found.append((node.lineno, f"import {alias.name}"))
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if not (node.level or _project_module(source, local)):
                continue
            if not node.level and private_module(source):
                found.append((node.lineno, f"from {source} import ..."))
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, f"from {'.' * node.level}{source} import {alias.name}"))
                else:
                    modules[alias.asname or alias.name] = f"{source}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in modules:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name not in ("setattr", "getattr", "delattr", "hasattr"):
                continue
            target = node.args[0]
            attr = node.args[1] if len(node.args) > 1 else None
            private_attr = (
                isinstance(attr, ast.Constant) and isinstance(attr.value, str) and _private(attr.value)
            )
            if private_attr and isinstance(target, ast.Name) and target.id in modules:
                found.append((node.lineno, f"{name}({target.id}, {attr.value!r})"))
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                dotted = target.value.split(".")
                if _project_module(target.value, local) and any(_private(p) for p in dotted[1:]):
                    found.append((node.lineno, f"{name}({target.value!r})"))
    return sorted(found)


def test_no_module_uses_another_modules_private_names():
    beside = [REPO / "tests", REPO / "benchmarks"]
    local = {p.stem for folder in beside for p in folder.glob("*.py")}
    local |= {p.parent.name for folder in beside for p in folder.glob("*/__init__.py")}  # support
    found = {}
    for path in _files(*CHECKED):
        uses = _private_uses(path.read_text(), _module_of(path), local)
        if uses:
            found[str(path.relative_to(REPO))] = [f"line {line}: {what}" for line, what in uses]
    assert not found, json.dumps(found, indent=1)


def test_the_private_name_check_finds_each_kind_of_use():
    source = textwrap.dedent(
        """
        import rexsearch.space as space_module
        from rexsearch.latency import _hidden
        from rexsearch.space import solve
        from rexsearch._version import __version__

        space_module._fill
        solve._interpolation_search
        monkeypatch.setattr(space_module, "_fill", None)
        monkeypatch.setattr("rexsearch.export._export_torchscript", None)
        space_module.public, optuna_trial._trial_id
        """
    )
    assert [what for _, what in _private_uses(source, "tests.probe", set())] == [
        "from rexsearch.latency import _hidden",
        "from rexsearch._version import ...",
        "space_module._fill",
        "solve._interpolation_search",
        "setattr(space_module, '_fill')",
        "setattr('rexsearch.export._export_torchscript')",
    ]


def test_space_never_imports_latency():
    """The budget core reaches a latency table through its protocol only: no module of
    rexsearch/space imports rexsearch.latency, not even for typing."""
    found = []
    for path in _files("rexsearch/space"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if not node.level else [f"<relative {node.level}>.{node.module}"]
                names += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value.startswith("rexsearch.latency") else []
            found += [f"{path.name}:{node.lineno}: {n}" for n in names if "latency" in n.split(".")[:2]]
    assert not found, found
    code = (
        "import sys, rexsearch.space; "
        "print(sorted(m for m in sys.modules if m.startswith('rexsearch.latency') or m == 'torch'))"
    )
    assert _python(code) == "[]"
