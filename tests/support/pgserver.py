"""A throw-away PostgreSQL 15 server for tests and CI: 127.0.0.1 only, a free port, password auth.

In Python::

    server = PostgresServer.start(directory)   # initdb, pg_ctl start; server.url is the SQLAlchemy URL
    server.stop()                              # pg_ctl stop -m fast on exactly that data directory

From a shell (``.ci/run``)::

    python tests/support/pgserver.py start DIR    # prints the SQLAlchemy URL
    python tests/support/pgserver.py stop DIR     # stops it and removes DIR

Only the standard library is used (the user and database are set up with PostgreSQL's
own ``initdb`` and ``createdb``). PostgreSQL refuses to run as root: as root, the server
runs as an unprivileged system user (``rexsearch-pg``, created when absent, else
``postgres``) that owns the server's directory. No Unix socket is created.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

BIN_DIRS = (os.environ.get("REXSEARCH_PG_BIN", ""), "/usr/lib/postgresql/15/bin")
SERVICE_USER = "rexsearch-pg"
STATE = "server.json"
DB_USER = "rexsearch"
DB_NAME = "rexsearch"


class PostgresError(RuntimeError):
    """The server could not be set up or started; the message carries its log."""


def bin_dir() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres/createdb, or None when PostgreSQL is not installed."""
    for candidate in BIN_DIRS:
        if candidate and all((Path(candidate) / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def available() -> bool:
    return bin_dir() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_user() -> str | None:
    """The unprivileged user to run the server as (None when not root)."""
    if os.geteuid() != 0:
        return None
    if _user_exists(SERVICE_USER):
        return SERVICE_USER
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
        capture_output=True,
        text=True,
    )
    if made.returncode == 0 or _user_exists(SERVICE_USER):
        return SERVICE_USER
    if _user_exists("postgres"):
        return "postgres"
    raise PostgresError(f"running as root and cannot create the user {SERVICE_USER}: {made.stderr.strip()}")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _run(
    cmd: list[str], user: str | None, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
):
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    result = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-2000:]
        raise PostgresError(f"{' '.join(cmd)} failed ({result.returncode}): {output}")
    return result


@dataclass
class PostgresServer:
    """A server started by :meth:`start`; ``url`` is its SQLAlchemy URL (psycopg2)."""

    directory: str
    port: int
    user: str
    password: str
    database: str
    os_user: str | None
    bin: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        return Path(self.directory) / "data"

    @property
    def log(self) -> Path:
        return Path(self.directory) / "server.log"

    @classmethod
    def start(cls, directory: str | Path | None = None, tries: int = 3) -> PostgresServer:
        """initdb in ``directory`` (new or empty; default a new temporary folder), then start the server."""
        binaries = bin_dir()
        if binaries is None:
            raise PostgresError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
        if directory is None:
            directory = tempfile.mkdtemp(prefix="rexsearch-pg-")
        path = Path(directory).resolve()
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise PostgresError(f"{path} is not empty")
        os_user = _service_user()
        if os_user:
            entry = pwd.getpwnam(os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o700)
        server = cls(str(path), 0, DB_USER, secrets.token_hex(12), DB_NAME, os_user, str(binaries))
        server._initdb()
        for attempt in range(tries):
            server.port = _free_port()
            server._save()
            try:
                server._start()
                break
            except PostgresError:
                if attempt == tries - 1:
                    raise
        try:
            _run(
                [
                    str(binaries / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(server.port),
                    "-U",
                    DB_USER,
                    DB_NAME,
                ],
                os_user,
                path,
                env={"PGPASSWORD": server.password},
            )
        except BaseException:
            server.stop()
            raise
        return server

    def _save(self) -> None:
        """Record the server in its directory (before it starts, so ``stop`` always finds it)."""
        state = Path(self.directory) / STATE
        state.write_text(json.dumps(asdict(self)) + "\n")
        state.chmod(0o600)

    def _initdb(self) -> None:
        pwfile = Path(self.directory) / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        pwfile.chmod(0o600)
        try:
            _run(
                [
                    str(Path(self.bin) / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    "--pwfile",
                    str(pwfile),
                    "--auth",
                    "scram-sha-256",
                    "--no-sync",
                    "--encoding",
                    "UTF8",
                    "--no-locale",
                ],
                self.os_user,
                Path(self.directory),
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        try:
            _run(
                [
                    str(Path(self.bin) / "pg_ctl"),
                    "start",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                ],
                self.os_user,
                Path(self.directory),
            )
        except PostgresError as exc:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            self.stop()
            raise PostgresError(f"{exc}\n{log}") from None

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        """pg_ctl stop -m fast on this server's data directory (nothing else); quiet when not running."""
        if not self.running():
            return
        subprocess.run(
            [
                *(["runuser", "-u", self.os_user, "--"] if self.os_user else []),
                str(Path(self.bin) / "pg_ctl"),
                "stop",
                "-D",
                str(self.data),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
            ],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    @classmethod
    def load(cls, directory: str | Path) -> PostgresServer:
        """The server recorded in ``directory`` by :meth:`start`."""
        state = Path(directory) / STATE
        return cls(**json.loads(state.read_text()))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python tests/support/pgserver.py start|stop DIR", file=sys.stderr)
        return 2
    command, directory = argv
    if command == "start":
        try:
            server = PostgresServer.start(directory)
        except PostgresError as exc:
            print(f"pgserver: {exc}", file=sys.stderr)
            return 1
        print(server.url)
        return 0
    if not (Path(directory) / STATE).is_file():
        print(f"pgserver: no server recorded in {directory}", file=sys.stderr)
        return 1
    PostgresServer.load(directory).remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
