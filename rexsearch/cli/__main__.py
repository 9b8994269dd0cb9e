"""``python -m rexsearch.cli``: the same as the ``rexsearch`` command."""

import sys

from rexsearch.cli import main

sys.exit(main())
