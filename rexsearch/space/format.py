"""The space file format (``rexsearch.space/1``): reading, validating, and finding a space by name.

A space file names a ``generator`` (how the variables become a channel schedule,
:mod:`rexsearch.space.generators`), the searched ``variables`` (each ``{choices: [...]}`` or
``{low, high[, type, log, step]}``) and the ``fixed`` arguments. :func:`parse_space` refuses
anything else with the file, line, key and allowed values, and refuses what a plain space
file never needs (tags, deep nesting, alias bombs) before anything is built from it.

The shipped spaces are package data in ``rexsearch/space/shipped/`` (:data:`SPACES_DIR`), so
an installed rexsearch finds them by name; any other space file is given by its path
(docs/architecture.md, "Search spaces").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rexsearch.errors import UserError
from rexsearch.files import read_text_file
from rexsearch.space.generators import GENERATORS, Param
from rexsearch.space.spaces import SPACE_FORMAT, Space, Variable

#: Where the shipped spaces are: package data, found by name (``rexnet``).
SPACES_DIR = Path(__file__).resolve().parent / "shipped"


class SpaceError(UserError):
    """A space file is malformed; the message names the file, line, key and allowed values."""


def shipped_space_names() -> list[str]:
    """The names of the shipped spaces, sorted."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _to_python(node: yaml.Node, err: Callable[[int, str], SpaceError]) -> Any:
    try:
        return yaml.safe_load(yaml.serialize(node))
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # e.g. ``!!int abc``
        raise err(_line(node), f"the value cannot be read ({exc})") from None


#: Limits on a space file (the shipped ones are about 2 kB, 100 nodes, 4 levels deep).
MAX_SPACE_CHARS = 1_000_000
MAX_SPACE_DEPTH = 32
MAX_SPACE_NODES = 10_000
_PLAIN_TAGS = {
    "!",
    *(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")),
}


def _check_shape(text: str, err: Callable[[int, str], SpaceError]) -> None:
    """Refuse what a plain space file never needs, before anything is built from it.

    Tags other than the plain ones (``!!python/...`` and friends), nesting deeper than
    :data:`MAX_SPACE_DEPTH`, and more than :data:`MAX_SPACE_NODES` values counting what
    aliases expand to (so a "billion laughs" document is refused without expanding it).
    """
    if len(text) > MAX_SPACE_CHARS:
        raise err(1, f"the file has {len(text):,} characters; a space file is at most {MAX_SPACE_CHARS:,}")
    sizes: dict[str, int] = {}
    open_anchors: list[tuple[str | None, int]] = []
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _PLAIN_TAGS:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise err(
                line, f"the tag {shown} is not allowed; a space file holds plain values, lists and mappings"
            )
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                raise err(line, f"the alias *{event.anchor} refers to a value that contains it")
            total += sizes[event.anchor]
        elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            total += 1
            if isinstance(event, yaml.ScalarEvent):
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            else:
                open_anchors.append((event.anchor, total))
                if len(open_anchors) > MAX_SPACE_DEPTH:
                    raise err(line, f"values are nested deeper than {MAX_SPACE_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, start = open_anchors.pop()
            if anchor is not None:
                sizes[anchor] = total - start + 1
        if total > MAX_SPACE_NODES:
            raise err(
                line,
                f"the file expands to more than {MAX_SPACE_NODES:,} values (counting what aliases "
                "repeat); a space file needs far fewer",
            )


def _mapping(
    node: yaml.Node, where: str, err: Callable[[int, str], SpaceError]
) -> dict[str, tuple[yaml.Node, int]]:
    if not isinstance(node, yaml.MappingNode):
        raise err(_line(node), f"{where} must be a mapping")
    out: dict[str, tuple[yaml.Node, int]] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if key in out:
            raise err(_line(key_node), f"{where} repeats the key {key!r}")
        out[key] = (value_node, _line(key_node))
    return out


_TOP_KEYS = ("format", "name", "description", "generator", "fixed", "variables")
_VAR_KEYS = ("choices", "low", "high", "type", "log", "step")


def parse_space(text: str, source: str = "<space>") -> Space:
    """Parse and validate a space file's text; errors name the file, line, key and allowed values."""

    def err(line: int, message: str) -> SpaceError:
        return SpaceError(f"{source} line {line}: {message}")

    try:
        _check_shape(text, err)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise err(line, f"not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if root is None:
        raise SpaceError(f"{source}: the file is empty")
    top = _mapping(root, "the space", err)
    for key, (_, line) in top.items():
        if key not in _TOP_KEYS:
            raise err(line, f"unknown key {key!r}; allowed: {', '.join(_TOP_KEYS)}")
    if "format" in top:
        fmt = _to_python(top["format"][0], err)
        if fmt != SPACE_FORMAT:
            raise err(top["format"][1], f"format must be {SPACE_FORMAT!r}, got {fmt!r}")
    if "generator" not in top:
        raise err(_line(root), f"generator is missing; allowed: {', '.join(GENERATORS)}")
    generator = _to_python(top["generator"][0], err)
    if generator not in GENERATORS:
        raise err(top["generator"][1], f"generator must be one of {', '.join(GENERATORS)}, got {generator!r}")
    allowed, _ = GENERATORS[generator]
    lines: dict[str, int] = {}

    fixed: dict[str, Any] = {}
    if "fixed" in top:
        for key, (node, line) in _mapping(top["fixed"][0], "fixed", err).items():
            if key not in allowed:
                raise err(
                    line,
                    f"unknown fixed parameter {key!r} for generator {generator}; "
                    f"allowed: {', '.join(allowed)}",
                )
            value = _to_python(node, err)
            problem = allowed[key].check(value)
            if problem:
                raise err(line, f"fixed {key} = {value!r} is not allowed; allowed values: {problem}")
            fixed[key] = value
            lines[f"fixed.{key}"] = line

    variables: list[Variable] = []
    if "variables" not in top:
        raise err(_line(root), "variables is missing: a space needs at least one searched variable")
    for key, (node, line) in _mapping(top["variables"][0], "variables", err).items():
        if key not in allowed:
            raise err(
                line, f"unknown variable {key!r} for generator {generator}; allowed: {', '.join(allowed)}"
            )
        if key in fixed:
            raise err(line, f"{key!r} is both fixed and a variable")
        spec_nodes = _mapping(node, f"variables.{key}", err)
        for sub, (_, sub_line) in spec_nodes.items():
            if sub not in _VAR_KEYS:
                raise err(
                    sub_line, f"unknown key {sub!r} in variables.{key}; allowed: {', '.join(_VAR_KEYS)}"
                )
        spec = {sub: _to_python(n, err) for sub, (n, _) in spec_nodes.items()}
        variables.append(_variable(key, spec, allowed[key], lambda m, ln=line: err(ln, m)))
        lines[f"variables.{key}"] = line
    if not variables:
        raise err(top["variables"][1], "variables is empty: a space needs at least one searched variable")

    name = _to_python(top["name"][0], err) if "name" in top else Path(source).stem
    description = _to_python(top["description"][0], err) if "description" in top else ""
    return Space(str(name), generator, tuple(variables), fixed, str(description or ""), source, lines)


def _variable(name: str, spec: dict[str, Any], param: Param, err: Callable[[str], SpaceError]) -> Variable:
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise err(f"variables.{name} mixes choices with {extra[0]!r}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise err(f"variables.{name}.choices must be a non-empty list")
        for c in choices:
            problem = param.check(c)
            if problem:
                raise err(f"variables.{name} choice {c!r} is not allowed; allowed values: {problem}")
        return Variable(name, choices=tuple(choices), kind="categorical")
    if param.kind in ("bool", "choice"):
        raise err(f"variables.{name} must list choices (allowed values: {param.check(object())})")
    if "low" not in spec or "high" not in spec:
        raise err(f"variables.{name} needs choices, or low and high")
    low, high = spec["low"], spec["high"]
    for bound in (low, high):
        problem = param.check(bound)
        if problem:
            raise err(f"variables.{name} bound {bound!r} is not allowed; allowed values: {problem}")
    if low >= high:
        raise err(f"variables.{name}: low ({low}) must be below high ({high})")
    kind = spec.get("type", "int" if param.kind == "int" else "float")
    if kind not in ("int", "float") or (param.kind == "int" and kind != "int"):
        raise err(
            f"variables.{name}.type must be {'int' if param.kind == 'int' else 'int or float'}, got {kind!r}"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        raise err(f"variables.{name}.log must be true or false, and needs low > 0")
    step = spec.get("step")
    if step is not None:
        numeric = isinstance(step, (int, float)) and not isinstance(step, bool)
        if kind == "int" and not (numeric and float(step).is_integer() and step >= 1):
            raise err(
                f"variables.{name}.step must be a positive integer (the variable is an int), got {step!r}"
            )
        if not (numeric and math.isfinite(step) and 0 < step <= high - low):
            raise err(f"variables.{name}.step must be a positive number of at most high - low, got {step!r}")
    return Variable(name, low=float(low), high=float(high), kind=kind, log=log, step=step)


def resolve_space_path(space: str | Path) -> Path:
    """A shipped space by name (``rexnet``) or a path to a YAML file."""
    path = Path(space)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = SPACES_DIR / f"{space}.yaml"
    if shipped.exists():
        return shipped
    names = ", ".join(shipped_space_names())
    raise UserError(f"no search space {str(space)!r}: give a YAML file or one of {names}")


def load_space(space: str | Path) -> Space:
    """Load and validate a space by name or path."""
    path = resolve_space_path(space)
    # a little over the character cap in bytes: parse_space then names the length
    text = read_text_file(path, "the space file", 4 * MAX_SPACE_CHARS, SpaceError)
    return parse_space(text, str(path))
