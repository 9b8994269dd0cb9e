"""``python -m rexsearch.cli``: the same as the ``rexsearch`` command."""

from rexsearch.cli import entry

entry()
