"""optuna-dashboard on a run's storage, served from this process (``rexsearch dashboard``).

The dashboard's HTTP API can rename and delete studies and trials. Two guards keep a web page
or another local program from doing so behind the user's back:

- every request must name the served address in its ``Host`` header (a page that reaches the
  server through DNS rebinding sends its own domain name there, and is refused);
- writes (any method other than GET, HEAD and OPTIONS) are refused unless the server was made
  with ``allow_edits=True``; even then a write whose ``Origin`` is not the address the request
  was sent to (its ``Host``) is refused (a cross-site form or fetch; ``Origin: null`` too).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from rexsearch.errors import UserError
from rexsearch.rundir import load_run

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not log every request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (the library never prints)."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` of a Host header or an Origin's netloc, lower-cased; None when malformed."""
    try:
        parts = urlsplit(f"//{value.strip()}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostGuard:
    """WSGI middleware: the Host check for every request, the write guard for the others.

    ``host`` and ``port`` are the address served. Names accepted in ``Host``: that address; on a
    loopback address every loopback name; on a wildcard address (0.0.0.0, ::) any IP literal and
    this machine's own names. A domain name the server does not own (what DNS rebinding sends) is
    refused with 403.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], host: str, port: int, allow_edits: bool) -> None:
        self.app = app
        self.port = port
        self.allow_edits = allow_edits
        name = host.strip("[]").lower()
        self.names = {name}
        self.any_ip = False
        if name in LOOPBACK_NAMES or (_is_ip(name) and ipaddress.ip_address(name).is_loopback):
            self.names |= LOOPBACK_NAMES
        elif name in ("", "0.0.0.0", "::"):
            self.any_ip = True
            self.names |= LOOPBACK_NAMES | {socket.gethostname().lower(), socket.getfqdn().lower()}

    def served(self, value: str | None) -> bool:
        """Whether a Host header (or an Origin's host) names the address served."""
        if not value:
            return False
        split = _split_host(value)
        if split is None:
            return False
        name, port = split
        if port not in (None, self.port) or (port is None and self.port != 80):
            return False
        return name in self.names or (self.any_ip and _is_ip(name))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.served(environ.get("HTTP_HOST")):
            return _refuse(start_response, "this dashboard answers only requests addressed to it (Host)")
        if environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS:
            if not self.allow_edits:
                return _refuse(
                    start_response, "this dashboard is read-only; restart it with --allow-edits to edit"
                )
            origin = environ.get("HTTP_ORIGIN")
            if origin is not None and urlsplit(origin).netloc.lower() != environ["HTTP_HOST"].strip().lower():
                return _refuse(start_response, "edits are accepted only from the dashboard's own pages")
        return self.app(environ, start_response)


def _refuse(start_response: Callable[..., Any], why: str) -> list[bytes]:
    body = (why + "\n").encode()
    start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def dashboard_server(
    run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080, allow_edits: bool = False
) -> WSGIServer:
    """optuna-dashboard on the run's storage, bound to ``host:port`` (0: any free port), not yet serving.

    Read-only unless ``allow_edits``; requests not addressed to the server are refused (see the
    module's docstring). Call ``serve_forever()`` on the result; ``shutdown()`` from another
    thread stops it. A busy port or a missing run raises :class:`UserError`.
    """
    from optuna_dashboard import wsgi

    info = load_run(run_dir)
    storage = info.open_storage()
    info.open_study(storage)
    app = wsgi(storage)
    try:
        server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use; choose another with --port") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.set_app(HostGuard(app, host, server.server_port, allow_edits))
    return server
