"""optuna-dashboard on a run's storage, served from this process (``rexsearch dashboard``)."""

from __future__ import annotations

import errno
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from rexsearch.errors import UserError
from rexsearch.rundir import load_run


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not log every request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (the library never prints)."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def dashboard_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """optuna-dashboard on the run's storage, bound to ``host:port`` (0: any free port), not yet serving.

    Call ``serve_forever()`` on the result; ``shutdown()`` from another thread stops it.
    A busy port or a missing run raises :class:`UserError`.
    """
    from optuna_dashboard import wsgi

    info = load_run(run_dir)
    storage = info.open_storage()
    info.open_study(storage)
    app = wsgi(storage)
    try:
        return make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use; choose another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
