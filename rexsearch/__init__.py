"""rexsearch: channel-configuration search for ReXNet-style CNNs under a compute budget."""

from rexsearch.checkpoints import load_model
from rexsearch.config import BlockConfig, ReXNetConfig
from rexsearch.cost import Cost, count_cost, measure_cost, parse_budget
from rexsearch.model import build_model
from rexsearch.principles import PRESETS, get_preset

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "BlockConfig",
    "Cost",
    "ReXNetConfig",
    "build_model",
    "count_cost",
    "get_preset",
    "load_model",
    "measure_cost",
    "parse_budget",
]
