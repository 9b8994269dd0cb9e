"""The one place that opens Optuna RDB storage (SQLite, PostgreSQL, ...) for every command.

:func:`open_storage` connects at once (creating Optuna's tables when missing) and turns
what can go wrong into a one-line :class:`~rexsearch.errors.UserError`: a malformed URL,
a missing driver, a server that cannot be reached, failed authentication, a missing
database. The password of a URL never appears in a message (:func:`mask_url`).
:func:`check_storage` is the early check of ``rexsearch run``/``resume``, made before
Ray starts or anything is written.
"""

from __future__ import annotations

import re
from typing import Any

import optuna

from rexsearch.errors import UserError

#: What a PostgreSQL URL looks like, for messages.
POSTGRES_FORM = "postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DATABASE"
#: Seconds a PostgreSQL (psycopg2) connection attempt may take (unless the URL sets connect_timeout).
CONNECT_TIMEOUT_S = 10
_POSTGRES_EXTRA = "pip install 'rexsearch[postgres]'"
#: The environment variable that gives the storage password at resume (the URL in run.json has none).
PASSWORD_ENV = "REXSEARCH_STORAGE_PASSWORD"
_PASSWORD_RE = re.compile(r"(://[^:/@\s]*:)(\S*)(@)")
_QUERY_PASSWORD_RE = re.compile(r"([?&](?:password|passwd|pwd)=)([^&\s]*)", re.IGNORECASE)
_URL_RE = re.compile(r"[A-Za-z][\w+.-]*://\S+")
#: Query keys that carry a password once decoded (SQLAlchemy percent-decodes keys and values and
#: hands them to the driver: ``?pass%77ord=...`` authenticates like ``?password=...``).
SECRET_KEYS = frozenset({"password", "passwd", "pwd"})
_SECRET_IN_VALUE_RE = re.compile(r"(?:password|passwd|pwd)\s*=|://[^/@\s]*:[^@\s]*@", re.IGNORECASE)


def _secret_pair(pair: str) -> bool:
    """Whether one ``key=value`` of a query carries a password, read as the driver reads it.

    The key is decoded as SQLAlchemy decodes it (``unquote_plus``); a value that itself holds a
    password (a libpq ``dsn=`` string, a URL with userinfo) counts too.
    """
    from urllib.parse import unquote_plus

    key, sep, value = pair.partition("=")
    if unquote_plus(key).strip().lower() in SECRET_KEYS:
        return True
    return bool(sep) and _SECRET_IN_VALUE_RE.search(unquote_plus(value)) is not None


#: A URL's userinfo, read wide: the user name ends at the first ``:`` (SQLAlchemy lets it hold
#: ``@``), the password runs to the last ``@`` of the URL, so a password holding ``?``, ``/`` or
#: an unencoded ``@`` is never taken for the host or the query.
_USERINFO_RE = re.compile(r"([\w+.-]+://)([^:/]*)(?::(.*))?@")


def _rewrite_url(url: str, hide: bool) -> str:
    """One URL with its passwords masked (``hide``: ``***``) or removed (not ``hide``)."""
    head, rest = "", url
    userinfo = _USERINFO_RE.match(url)
    if userinfo and userinfo.group(3) is not None:
        head = userinfo.group(1) + userinfo.group(2) + (":***@" if hide else "@")
        rest = url[userinfo.end() :]
    base, sep, query = rest.partition("?")
    base = head + base
    if not sep:
        return base
    pairs = []
    for pair in query.split("&"):
        if not _secret_pair(pair):
            pairs.append(pair)
        elif hide:
            pairs.append(pair.partition("=")[0] + "=***")
    kept = "&".join(p for p in pairs if p)
    return f"{base}?{kept}" if kept else base


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (also when SQLAlchemy cannot parse it)."""
    return mask_passwords(url)


def mask_passwords(text: str) -> str:
    """``text`` (e.g. a command line) with the password of every URL in it replaced by ``***``.

    Covers ``user:password@host`` and every query key that decodes to a password key
    (:data:`SECRET_KEYS`, percent-encoded or not), or whose value holds one.
    """
    masked = _URL_RE.sub(lambda m: _rewrite_url(m.group(0), hide=True), text)
    return _QUERY_PASSWORD_RE.sub(r"\1***", masked)


def strip_password(url: str) -> str:
    """``url`` without its password (userinfo and every password query key), for run.json.

    At resume the password comes from :data:`PASSWORD_ENV`, or libpq's own ``PGPASSWORD``
    and ``~/.pgpass`` (see :func:`with_password`).
    """
    return _rewrite_url(url, hide=False)


def with_password(url: str) -> str:
    """``url`` with the password of :data:`PASSWORD_ENV` filled in when it names none."""
    import os

    password = os.environ.get(PASSWORD_ENV)
    if not password or is_sqlite(url):
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # malformed: open_storage explains it
        return url
    if parsed.password or "password" in parsed.query:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return url.strip().lower().startswith("sqlite")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna RDB storage at ``url``, connected; every failure is a one-line :class:`UserError`."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    url = with_password(url)
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        raise UserError(_malformed(url, shown)) from None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.drivername == "postgresql+psycopg2" and "connect_timeout" not in parsed.query:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=None)
    except ImportError as exc:
        raise UserError(_missing_driver(parsed, shown, exc)) from None
    except (KeyError, IndexError):  # optuna fills {SCHEMA_VERSION} templates: a lone brace in the URL
        raise UserError(_malformed(url, shown) + " (write a brace in the URL as {{ or }})") from None
    except (sa_exc.SQLAlchemyError, ValueError, RuntimeError) as exc:
        raise UserError(_explain(exc, url, parsed, shown)) from None


def check_storage(url: str) -> None:
    """Connect to a non-SQLite storage once and close again (SQLite is left as it was: opened later).

    ``rexsearch run``/``resume`` call this before Ray starts and before the run directory is
    written, so a storage that cannot be used stops the command at once (exit 2).
    """
    if is_sqlite(url):
        return
    open_storage(url).engine.dispose()


# ---------------------------------------------------------------------------- messages
def _malformed(url: str, shown: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    hint = ""
    if scheme.lower() == "postgres":
        hint = " (SQLAlchemy spells it postgresql, not postgres)"
    return (
        f"malformed storage URL {shown!r}{hint}: --storage takes a SQLAlchemy URL such as "
        f"{POSTGRES_FORM} or sqlite:///PATH"
    )


def _missing_driver(parsed: Any, shown: str, exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    module = getattr(cause, "name", None) or str(cause)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql" and driver == "psycopg2":
        return (
            f"the storage {shown} needs the PostgreSQL driver psycopg2, which is not installed: "
            f"{_POSTGRES_EXTRA}"
        )
    if backend == "postgresql" and parsed.drivername == "postgresql":
        return (
            f"the storage {shown} names no driver, so SQLAlchemy uses {driver}, which is not installed: "
            f"write the URL as {POSTGRES_FORM} and {_POSTGRES_EXTRA}"
        )
    return (
        f"the storage {shown} needs the database driver {driver} for {backend} (Python module "
        f"{module!r}), which is not installed; install it, or use {POSTGRES_FORM} with {_POSTGRES_EXTRA}"
    )


def _driver_message(exc: BaseException) -> str:
    """The database driver's own message (first line), or the exception's."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _scrub(text: str, password: str | None) -> str:
    if password and len(password) >= 3:
        text = text.replace(password, "***")
    return text


def _explain(exc: BaseException, url: str, parsed: Any, shown: str) -> str:
    from sqlalchemy import exc as sa_exc

    backend = parsed.get_backend_name()
    password = parsed.password or parsed.query.get("password")
    if isinstance(password, tuple):
        password = password[0]
    if isinstance(exc, sa_exc.ArgumentError | ValueError) and not isinstance(exc, sa_exc.DBAPIError):
        return _malformed(url, shown)
    detail = _driver_message(exc)
    lowered = detail.lower()
    if backend == "sqlite":
        return _scrub(
            f"cannot open the SQLite storage {shown}: {detail} (does its folder exist and is it writable?)",
            password,
        )
    if isinstance(exc, RuntimeError) and "table schema" in lowered:
        return _scrub(
            f"the Optuna tables in {shown} were written by another Optuna version: {detail} "
            "(upgrade them with `optuna storage upgrade --storage URL`, or use another database)",
            password,
        )
    host = parsed.host or parsed.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = ",".join(host)
    default_port = {"postgresql": 5432, "mysql": 3306}.get(backend)
    query_port = parsed.query.get("port")
    if isinstance(query_port, tuple):
        query_port = ",".join(query_port)
    port = parsed.port or query_port or default_port
    shown_host = f"[{host}]" if ":" in host else host
    where = f"{shown_host}:{port}" if port else shown_host
    user = parsed.username or "(none)"
    database = parsed.database or "(default)"
    if "password authentication failed" in lowered or "access denied" in lowered:
        return (
            f"authentication failed for user {user!r} on the database server at {where} (wrong user name "
            f"or password); check the credentials in --storage {shown}"
        )
    if "no password supplied" in lowered:
        return (
            f"the database server at {where} asks user {user!r} for a password and --storage {shown} "
            f"gives none (run.json keeps no password); set {PASSWORD_ENV} or PGPASSWORD, "
            "or put it in ~/.pgpass"
        )
    if "does not exist" in lowered and "database" in lowered:
        return (
            f"the database {database!r} does not exist on the server at {where}; create it "
            f"(e.g. createdb -h {host} -p {port} -U {user} {database}) or name another in --storage {shown}"
        )
    if "role" in lowered and "does not exist" in lowered:
        return f"the database server at {where} has no user {user!r}; check --storage {shown}"
    if "pg_hba.conf" in lowered:
        return _scrub(
            f"the database server at {where} does not admit this connection ({detail}); allow it in the "
            f"server's pg_hba.conf or connect differently (--storage {shown})",
            password,
        )
    unreachable = (
        "connection refused",
        "could not connect",
        "could not translate host name",
        "name or service not known",
        "timeout expired",
        "timed out",
        "no route to host",
        "network is unreachable",
        "server closed the connection",
        "can't connect",
    )
    if any(k in lowered for k in unreachable):
        return _scrub(
            f"cannot reach the database server at {where} ({detail}); the server must be running and "
            f"reachable from this machine at that host and port (--storage {shown})",
            password,
        )
    return _scrub(
        f"cannot open the storage {shown}: {type(getattr(exc, 'orig', None) or exc).__name__}: {detail}",
        password,
    )
