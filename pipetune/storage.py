"""The study storage: one URL, checked before any work, never shown with its password, and
ridden through a short outage.

``check_storage`` turns each way a URL can be wrong into one line (``StorageError``, exit 2)
before the sweep builds shards or starts a trial. ``call`` retries a storage call through a
server restart or a fail-over (about 30 s), then gives up with ``StorageLostError`` (exit 1);
what was stored before stays stored.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from pipetune.errors import StorageError, StorageLostError

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5  # a wrong or firewalled host fails in seconds, not after TCP's minutes
POSTGRES_DRIVER = "postgresql+psycopg"
# What installs each driver. Only psycopg (PostgreSQL) and the stdlib's sqlite3 are tested.
_TESTED_DRIVERS = {"psycopg": "pip install 'pipetune[postgres]' (it brings psycopg[binary])"}
_UNTESTED_DRIVERS = {"pymysql": "pip install pymysql", "mysqldb": "pip install mysqlclient",
                     "psycopg2": "pip install psycopg2-binary"}
_UNREACHABLE = ("connection refused", "could not connect", "can't connect", "timeout", "timed out",
                "resolve host", "name or service not known", "could not translate host",
                "no route to host", "network is unreachable")


def redact(url: str) -> str:
    """``url`` with its password (and any ``password=`` query value) shown as ``***``."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:  # not a URL; still hide anything shaped like user:secret@
        return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", url)
    query = {k: ("***" if "password" in k.lower() else v) for k, v in parsed.query.items()}
    # render_as_string escapes the query's *** as %2A%2A%2A: unescape it for reading.
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def normalize(url: str) -> str:
    """``url`` with the tested driver made explicit for PostgreSQL.

    ``postgresql://`` names no driver: SQLAlchemy 2.0 then picks psycopg2, 2.1 psycopg 3;
    ``postgres://`` (what many hosts print) SQLAlchemy does not know at all. Both mean psycopg 3
    here, the driver of the ``postgres`` extra. An explicit ``postgresql+DRIVER://`` is kept.
    """
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return url  # check_storage says what is wrong with it
    if parsed.drivername in ("postgres", "postgresql"):
        return parsed.set(drivername=POSTGRES_DRIVER).render_as_string(hide_password=False)
    return url


def is_server(url: str) -> bool:
    """Whether ``url`` is for a database server rather than an SQLite file (a malformed URL
    counts as one: checking it says what is wrong)."""
    try:
        return make_url(url).get_backend_name() != "sqlite"
    except sa.exc.ArgumentError:
        return True  # checked like a server URL: the check says what is wrong with it


def engine_options(url: str | URL) -> dict[str, Any]:
    """create_engine keywords for every engine on the study storage (claims, Optuna, the check)."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {}
    # pre_ping: after a server restart, pooled connections are dead; test each before use.
    return {"pool_pre_ping": True, "connect_args": (
        {"connect_timeout": CONNECT_TIMEOUT_S} if backend in ("postgresql", "mysql") else {})}


def usable(url: str) -> str:
    """The URL a sweep opens: ``url`` normalized, then checked (``check_storage``)."""
    url = normalize(url)
    check_storage(url)
    return url


def check_storage(url: str) -> None:
    """Fail early, in one line naming the redacted URL, when ``url`` cannot hold the study.

    Raises:
        StorageError: a URL that is not one, a missing driver, a server that cannot be reached,
            refused credentials, a missing database, an SQLite path that cannot be written.
    """
    problem = _problem(url)
    if problem is not None:
        raise StorageError(f"cannot use the study storage {redact(url)}: {problem}")


def _problem(url: str) -> str | None:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return ("not a database URL (expected e.g. sqlite:///study.sqlite3 or "
                "postgresql+psycopg://user:password@host/database)")
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_problem(parsed)
    try:
        engine = sa.create_engine(parsed, **engine_options(parsed))
    except sa.exc.NoSuchModuleError:
        return f"unknown database kind {parsed.drivername!r} (tested: sqlite, {POSTGRES_DRIVER})"
    except ImportError as err:
        return _missing_driver(parsed, err)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as err:
        return _connect_problem(parsed, err)
    finally:
        engine.dispose()
    return None


def _missing_driver(parsed: URL, err: ImportError) -> str:
    driver = parsed.get_driver_name()
    if driver in _TESTED_DRIVERS:
        return f"the database driver {driver} is not installed: {_TESTED_DRIVERS[driver]}"
    install = _UNTESTED_DRIVERS.get(driver, f"install the module {err.name or driver}")
    return (f"the database driver {driver} is not installed: {install} (untested with pipetune, "
            f"which is tested on SQLite and PostgreSQL through {POSTGRES_DRIVER})")


def _connect_problem(parsed: URL, err: sa.exc.DBAPIError) -> str:
    said = driver_message(err, parsed.password)
    lower = said.lower()
    if re.search(r'authentication failed|no password supplied|access denied|role "[^"]*" does not exist',
                 lower):
        why = f"the server refused the user name or password of {parsed.username!r}"
    elif re.search(r'database "[^"]*" does not exist|unknown database', lower):
        why = f"the database {parsed.database!r} does not exist on the server (create it first)"
    elif any(s in lower for s in _UNREACHABLE):
        where = f"{parsed.host or 'localhost'}" + (f":{parsed.port}" if parsed.port else " (default port)")
        why = f"no server answers at {where} (check the host and port, and that the server runs)"
    else:
        why = "the server refused the connection"
    return f"{why} [{said}]"


def _sqlite_problem(parsed: URL) -> str | None:
    database = parsed.database or ""
    if database in ("", ":memory:"):
        return "an in-memory SQLite database is gone when the sweep ends: give a file path"
    if parsed.query.get("uri"):
        return None  # a sqlite file: URI; SQLite itself reads its options
    path = Path(database)
    folder = path.parent
    if path.is_dir():
        return f"{path} is a folder, not a database file"
    if not folder.is_dir():
        return f"the folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
    if not path.exists():
        return None if os.access(folder, os.W_OK | os.X_OK) else f"the folder {folder} is not writable"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not writable"
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            conn.execute("PRAGMA schema_version")
    except sqlite3.DatabaseError as err:
        return f"{path} is not an SQLite database ({err})"
    return None


def driver_message(err: BaseException, password: str | None) -> str:
    """The first line of what the database driver said, without the password in it.

    (``str()`` of a SQLAlchemy error appends the statement and its parameters: a whole stored
    result. The driver's own first line is what a user can act on.)
    """
    inner = err
    while getattr(inner, "orig", None) is None and inner.__cause__ is not None:
        inner = inner.__cause__  # Optuna's StorageInternalError wraps SQLAlchemy's error
    inner = getattr(inner, "orig", None) or inner
    text = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
    return text.replace(password, "***") if password else text


# --------------------------------------------------------------------------- an outage mid-sweep


@dataclass(frozen=True, slots=True)
class Retry:
    """Waits between attempts of a storage call. A restart or a fail-over takes seconds; about
    30 s in all rides through one without leaving a worker hanging on a server that is gone."""

    delays_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


def is_transient(err: BaseException) -> bool:
    """A lost or refused connection (worth retrying), not a bad statement."""
    import optuna

    if isinstance(err, optuna.exceptions.StorageInternalError):  # Optuna wraps SQLAlchemy's errors
        err = err.__cause__ or err
    return isinstance(err, sa.exc.OperationalError) or (
        isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated)


def call(action: Callable[[], T], url: str, what: str, retry: Retry = Retry()) -> T:
    """``action()``, retried through a transient storage outage.

    Raises:
        StorageLostError: the storage did not come back within ``retry``'s delays.
    """
    password = _password(url)
    for delay in (*retry.delays_s, None):
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - anything not transient is re-raised
            if not is_transient(err):
                raise
            said = driver_message(err, password)
            if delay is None:
                raise StorageLostError(
                    f"lost the study storage {redact(url)} while {what} ({said}); it did not come "
                    f"back within {sum(retry.delays_s):.0f} s. Finished trials are stored") from err
            print(f"pipetune: the study storage {redact(url)} did not answer while {what} ({said}); "
                  f"retrying in {delay:g} s", file=sys.stderr, flush=True)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except sa.exc.ArgumentError:
        return None
