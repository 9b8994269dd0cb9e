"""ReXNetConfig: one network described completely as data (format ``rexsearch.config/1``).

Presets and search spaces only produce configs; the model builder and the cost model
are pure functions of a config. Configs are immutable, round-trip through JSON and
have a stable content hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import reprlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rexsearch.errors import ConfigError
from rexsearch.files import loads_json, read_text_file, write_text_atomic

FORMAT = "rexsearch.config/1"

#: Nonlinearities a config may name (``rexsearch.model.make_activation`` builds them).
ACTIVATIONS: tuple[str, ...] = (
    "identity",
    "relu",
    "relu6",
    "silu",
    "elu",
    "leaky_relu",
    "softplus",
    "hardswish",
    "gelu",
    "mish",
    "tanh",
)

SHORTCUTS: tuple[str, ...] = ("partial", "identity", "none")


def _check_activation(where: str, name: Any) -> None:
    if name not in ACTIVATIONS:
        raise ConfigError(f"{where} must be one of {', '.join(ACTIVATIONS)}, got {_shown(name)}")


#: Largest channel count, expansion, kernel or class count a config may hold: far above any
#: real network, low enough that costs stay machine integers and a typo is not a bignum.
MAX_INT = 2**24
#: Longest config JSON text accepted (a 1000-block config is about 150 kB).
MAX_JSON_CHARS = 2_000_000
#: A config ``name``: a plain label (it appears in file and folder names, never as a path).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


def _shown(value: Any) -> str:
    """A short repr for messages (long strings, deep lists and huge numbers are abbreviated)."""
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"a {len(str(abs(value)))}-digit number"
    short = reprlib.Repr()
    short.maxstring, short.maxother = 60, 60
    return short.repr(value)


def _check_positive_int(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {_shown(value)}")
    if value > MAX_INT:
        raise ConfigError(f"{where} must be at most {MAX_INT:,}, got {_shown(value)}")


def check_name(name: Any) -> None:
    """Raise a ConfigError unless ``name`` is a plain label (see :data:`NAME_PATTERN`)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            "name must be 1 to 128 letters, digits, '.', '_', '-', '@' or '+', starting with a letter "
            f"or digit (it becomes part of file names), got {_shown(name)}"
        )


@dataclass(frozen=True)
class BlockConfig:
    """One ReXNet inverted bottleneck (expand 1x1, depthwise kxk, SE, project 1x1)."""

    in_channels: int
    out_channels: int
    expansion: int = 6
    kernel: int = 3
    stride: int = 1
    se: bool = False
    activation: str | None = None
    dw_activation: str | None = None

    @property
    def dw_channels(self) -> int:
        """Width of the depthwise conv: ``in_channels * expansion``."""
        return self.in_channels * self.expansion

    @property
    def has_expand(self) -> bool:
        """Whether the block opens with a 1x1 expansion conv (BN + ``activation``): expansion != 1."""
        return self.expansion != 1

    def validate(self, where: str) -> None:
        if (  # the common case, checked without building a message: every field as it must be
            type(self.in_channels) is int
            and type(self.out_channels) is int
            and type(self.expansion) is int
            and type(self.kernel) is int
            and type(self.stride) is int
            and type(self.se) is bool
            and 1 <= self.in_channels <= MAX_INT
            and 1 <= self.out_channels <= MAX_INT
            and 1 <= self.expansion <= MAX_INT
            and self.kernel % 2 == 1
            and self.kernel >= 1
            and self.stride in (1, 2)
            and (self.activation is None or self.activation in ACTIVATIONS)
            and (self.dw_activation is None or self.dw_activation in ACTIVATIONS)
        ):
            return
        _check_positive_int(f"{where}.in_channels", self.in_channels)
        _check_positive_int(f"{where}.out_channels", self.out_channels)
        _check_positive_int(f"{where}.expansion", self.expansion)
        if isinstance(self.kernel, bool) or not isinstance(self.kernel, int):
            raise ConfigError(f"{where}.kernel must be an odd positive integer, got {_shown(self.kernel)}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"{where}.kernel must be an odd positive integer, got {_shown(self.kernel)}")
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            raise ConfigError(f"{where}.stride must be 1 or 2, got {_shown(self.stride)}")
        if not isinstance(self.se, bool):
            raise ConfigError(f"{where}.se must be true or false, got {_shown(self.se)}")
        if self.activation is not None:
            _check_activation(f"{where}.activation", self.activation)
        if self.dw_activation is not None:
            _check_activation(f"{where}.dw_activation", self.dw_activation)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "expansion": self.expansion,
            "kernel": self.kernel,
            "stride": self.stride,
            "se": self.se,
        }
        if self.activation is not None:
            out["activation"] = self.activation
        if self.dw_activation is not None:
            out["dw_activation"] = self.dw_activation
        return out


_BLOCK_FIELDS = {f.name for f in fields(BlockConfig)}


@dataclass(frozen=True)
class ReXNetConfig:
    """A ReXNet-style network: stem, a chain of blocks, penultimate conv and classifier.

    Validation runs on construction; every error is one sentence naming the field
    and the offending value.
    """

    blocks: tuple[BlockConfig, ...]
    stem_channels: int = 32
    stem_stride: int = 2
    se_ratio: int = 12
    penultimate_channels: int = 1280
    num_classes: int = 1000
    activation: str = "silu"
    dw_activation: str = "relu6"
    dropout: float = 0.2
    shortcut: str = "partial"
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        _check_positive_int("stem_channels", self.stem_channels)
        if self.stem_stride not in (1, 2) or isinstance(self.stem_stride, bool):
            raise ConfigError(f"stem_stride must be 1 or 2, got {_shown(self.stem_stride)}")
        _check_positive_int("se_ratio", self.se_ratio)
        _check_positive_int("penultimate_channels", self.penultimate_channels)
        _check_positive_int("num_classes", self.num_classes)
        _check_activation("activation", self.activation)
        _check_activation("dw_activation", self.dw_activation)
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not math.isfinite(self.dropout)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ConfigError(f"dropout must be a number in [0, 1), got {_shown(self.dropout)}")
        if self.shortcut not in SHORTCUTS:
            raise ConfigError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {_shown(self.shortcut)}")
        if not isinstance(self.blocks, tuple) or not self.blocks:
            raise ConfigError("blocks must be a non-empty list of blocks")
        previous = self.stem_channels
        for i, block in enumerate(self.blocks):
            where = f"blocks[{i}]"
            if not isinstance(block, BlockConfig):
                raise ConfigError(f"{where} must be a block object, got {_shown(block)}")
            block.validate(where)
            if block.in_channels != previous:
                source = "stem_channels" if i == 0 else f"blocks[{i - 1}].out_channels"
                raise ConfigError(
                    f"{where}.in_channels must equal {source} ({previous}), got {block.in_channels}"
                )
            if block.se and block.dw_channels // self.se_ratio < 1:
                raise ConfigError(
                    f"se_ratio {self.se_ratio} leaves no SE channels in {where} "
                    f"(depthwise width {block.dw_channels}); use a smaller se_ratio or disable se"
                )
            previous = block.out_channels

    # ------------------------------------------------------------------ derived
    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def out_channels(self) -> list[int]:
        """Output width of every block, in order."""
        return [b.out_channels for b in self.blocks]

    @property
    def expand_layers(self) -> int:
        """Number of blocks whose output is wider than their input."""
        return sum(b.out_channels > b.in_channels for b in self.blocks)

    def block_activation(self, block: BlockConfig) -> str:
        return block.activation or self.activation

    def block_dw_activation(self, block: BlockConfig) -> str:
        return block.dw_activation or self.dw_activation

    def uses_shortcut(self, block: BlockConfig) -> bool:
        if block.stride != 1 or self.shortcut == "none":
            return False
        if self.shortcut == "identity":
            return block.in_channels == block.out_channels
        return block.in_channels <= block.out_channels

    def with_num_classes(self, num_classes: int) -> ReXNetConfig:
        return replace(self, num_classes=num_classes)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT}
        if self.name is not None:
            out["name"] = self.name
        out.update(
            {
                "stem_channels": self.stem_channels,
                "stem_stride": self.stem_stride,
                "blocks": [b.to_dict() for b in self.blocks],
                "se_ratio": self.se_ratio,
                "penultimate_channels": self.penultimate_channels,
                "num_classes": self.num_classes,
                "activation": self.activation,
                "dw_activation": self.dw_activation,
                "dropout": self.dropout,
                "shortcut": self.shortcut,
            }
        )
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        """Write the JSON form atomically (temporary file, then rename)."""
        write_text_atomic(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> ReXNetConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", FORMAT)
        if fmt != FORMAT:
            raise ConfigError(f"format must be {FORMAT!r}, got {_shown(fmt)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config field {_shown(unknown[0])}; known fields: {', '.join(sorted(known))}"
            )
        if data.get("name") is not None:
            check_name(data["name"])
        if "blocks" not in data:
            raise ConfigError("blocks is missing: a config needs a list of blocks")
        raw_blocks = data.pop("blocks")
        if not isinstance(raw_blocks, list):
            raise ConfigError(f"blocks must be a list, got {type(raw_blocks).__name__}")
        blocks = []
        for i, raw in enumerate(raw_blocks):
            if not isinstance(raw, dict):
                raise ConfigError(f"blocks[{i}] must be an object, got {_shown(raw)}")
            extra = sorted(set(raw) - _BLOCK_FIELDS)
            if extra:
                raise ConfigError(
                    f"blocks[{i}] has unknown field {_shown(extra[0])}; "
                    f"known: {', '.join(sorted(_BLOCK_FIELDS))}"
                )
            for required in ("in_channels", "out_channels"):
                if required not in raw:
                    raise ConfigError(f"blocks[{i}].{required} is missing")
            blocks.append(BlockConfig(**raw))
        return cls(blocks=tuple(blocks), **data)

    @classmethod
    def from_json(cls, text: str) -> ReXNetConfig:
        if len(text) > MAX_JSON_CHARS:
            raise ConfigError(
                f"the config has {len(text):,} characters; a config is at most {MAX_JSON_CHARS:,}"
            )
        return cls.from_dict(loads_json(text, "the config", ConfigError))

    @classmethod
    def load(cls, path: str | Path) -> ReXNetConfig:
        path = Path(path)
        # a little over the character cap in bytes: from_json then names the length
        text = read_text_file(path, "config file", 4 * MAX_JSON_CHARS, ConfigError)
        try:
            return cls.from_json(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of the architecture (the name is not part of it)."""
        data = self.to_dict()
        data.pop("name", None)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def short_hash(self) -> str:
        return self.content_hash()[:12]
