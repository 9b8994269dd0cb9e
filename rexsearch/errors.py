"""Exception types shared by the library; the CLI maps :class:`UserError` to exit 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (a flag value, a file, a budget).

    The message is one or two plain sentences that say what was wrong and what to do.
    """


class ConfigError(UserError, ValueError):
    """A ReXNetConfig (or its JSON form) is invalid; the message names the field."""


class BudgetError(UserError, ValueError):
    """A budget string could not be parsed; the message names the flag."""


class LayoutError(UserError, ValueError):
    """A state_dict does not match the layout it is converted from or loaded into."""


class LatencyTableError(UserError):
    """A latency table does not fit the request (another device or runtime, a missing family)."""
