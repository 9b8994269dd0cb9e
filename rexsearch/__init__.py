"""rexsearch: channel-configuration search for ReXNet-style CNNs under a compute budget.

``import rexsearch`` is cheap: the config, cost and preset names are imported at once, and
the torch-backed ``build_model`` and ``load_model`` on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from rexsearch._version import __version__
from rexsearch.config import BlockConfig, ReXNetConfig
from rexsearch.cost import Cost, count_cost, measure_cost, parse_budget
from rexsearch.principles import PRESETS, get_preset

#: Public names whose modules import torch, loaded on first access.
_LAZY = {"build_model": "rexsearch.model", "load_model": "rexsearch.checkpoints"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rexsearch' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "BlockConfig",
    "Cost",
    "ReXNetConfig",
    "__version__",
    "build_model",
    "count_cost",
    "get_preset",
    "load_model",
    "measure_cost",
    "parse_budget",
]
