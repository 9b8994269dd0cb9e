"""What the tests import: helpers, fake runs and data files (fixtures are in tests/conftest.py).

pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml), so a test imports
``from support.synthetic import tiny_config`` or ``from support import runfixture``. This file
imports nothing, so a script that needs one module (benchmarks/ use :mod:`.cifar_archive`)
loads only that one.

* :mod:`.synthetic` — the tiny class-patterned images and network, a folder served over loopback;
* :mod:`.drivers` — rexsearch run as its own driver process, a study's trial counts, SIGTERM;
* :mod:`.latency` — the tiny space and the coarse tables of the latency tests;
* :mod:`.runfixture` — a fake but realistic run directory;
* :mod:`.cifar_archive` — CIFAR-100 and CIFAR-10 archives in the original format;
* :mod:`.dataset_files` — Fashion-MNIST's IDX files and image folders;
* :mod:`.pgserver` — a throw-away PostgreSQL server (also a script: ``.ci/run`` starts it).
"""
