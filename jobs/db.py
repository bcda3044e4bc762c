"""The database seam: one engine per process, and PostgreSQL errors turned into ``LedgerUnavailable``."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from jobs.errors import LedgerUnavailable
from jobs.settings import Settings, get_settings

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "autocommit",
    "close_direct",
    "direct",
    "dispose",
    "dispose_after_fork",
    "engine",
    "ledger_errors",
    "pooled",
    "safe_url",
    "session",
    "transaction",
    "unavailable",
]

CONNECT_TIMEOUT = 5


def safe_url(url: str) -> str:
    """The URL with its password hidden, fit for error messages."""
    return sa.make_url(url).render_as_string(hide_password=True)


_ENGINES: dict[str, sa.Engine] = {}
_OWNER: dict[str, int] = {}


def _engine(url: str) -> sa.Engine:
    if url in _ENGINES:
        return _ENGINES[url]
    _OWNER[url] = os.getpid()
    created = _ENGINES[url] = sa.create_engine(
        url,
        # No pre-ping: it would cost a round trip per checkout on the hot paths. A connection
        # found dead raises once (LedgerUnavailable) and SQLAlchemy then replaces the whole pool.
        pool_size=5,
        max_overflow=10,
        pool_recycle=1800,
        connect_args={"connect_timeout": CONNECT_TIMEOUT, "application_name": "jobs"},
    )
    return created


def engine(settings: Settings | None = None) -> sa.Engine:
    """The process's engine for the configured ledger."""
    return _engine((settings or get_settings()).database_url)


def dispose_after_fork() -> None:
    """Drop pooled connections inherited from a parent process (call in a forked child).

    A no-op in the process that made them: Celery's solo pool sends the
    "process init" signal in the worker's own process.
    """
    for url, created in _ENGINES.items():
        if _OWNER.get(url) != os.getpid():
            created.dispose(close=False)
            _OWNER[url] = os.getpid()


def dispose() -> None:
    """Close every pooled connection of this process (at exit, and between tests)."""
    for created in _ENGINES.values():
        created.dispose()
    close_direct()


class _Connections(dict[tuple[int, str], "psycopg.Connection[Any]"]):
    """One thread's direct connections by (process, URL), closed when the thread ends."""

    def close(self) -> None:
        for (pid, url), conn in list(self.items()):
            if pid == os.getpid():  # never a connection inherited from a parent process
                conn.close()
                del self[(pid, url)]

    def __del__(self) -> None:
        self.close()


class _Direct(threading.local):
    def __init__(self) -> None:
        self.connections = _Connections()


_DIRECT = _Direct()


@contextlib.contextmanager
def direct(settings: Settings | None = None) -> Iterator[psycopg.Connection[Any]]:
    """This thread's own autocommit psycopg connection, outside the pool: the worker's hot path.

    The claim and the finish of every job run here as server-side prepared
    statements (``jobs.ledger``): no pool checkout, no SQLAlchemy execution
    machinery, one round trip each. A connection that fails is dropped and
    ``LedgerUnavailable`` raised; the next call connects again. Keyed by
    process id, so a forked child never uses (or closes) its parent's.
    """
    import psycopg
    from psycopg.rows import namedtuple_row

    url = (settings or get_settings()).database_url
    key = (os.getpid(), url)
    conn = _DIRECT.connections.get(key)
    try:
        if conn is None or conn.closed:
            conn = psycopg.connect(
                _libpq_url(url),
                autocommit=True,
                prepare_threshold=0,
                row_factory=namedtuple_row,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="jobs",
            )
            _DIRECT.connections[key] = conn
        yield conn
    except psycopg.OperationalError as error:
        _DIRECT.connections.pop(key, None)
        if conn is not None:
            conn.close()
        raise unavailable(url, error) from error


def _libpq_url(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def close_direct() -> None:
    """Close this thread's direct connections (``direct``): a thread that used them and ends."""
    _DIRECT.connections.close()


@contextlib.contextmanager
def ledger_errors(url: str) -> Iterator[None]:
    """Turn "cannot reach PostgreSQL" into ``LedgerUnavailable`` naming the URL."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
        if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError) or _is_connect(error):
            raise unavailable(url, error.orig or error) from error
        raise


# The server says which database is missing; libpq gives no SQLSTATE for a failed connection.
_MISSING_DATABASE = re.compile(r'database "(?P<name>[^"]*)" does not exist')


def unavailable(url: str, error: BaseException) -> LedgerUnavailable:
    """The ``LedgerUnavailable`` for a failed connection: a missing database says how to create it.

    A missing database stays an infrastructure error (exit 3), not bad input:
    it is the state of a new deployment until its migration step creates the
    database, and the processes that wait for an unreachable ledger (workers,
    the leader) then recover by themselves, as they do when PostgreSQL returns.
    """
    text = str(error).strip()
    missing = _MISSING_DATABASE.search(text)
    if missing is not None and missing["name"] == sa.make_url(url).database:
        return LedgerUnavailable(
            f"the database {missing['name']!r} does not exist on the PostgreSQL server at "
            f"{safe_url(url)}; create it with: jobs db upgrade --create-database"
        )
    reason = text.splitlines()[0] if text else type(error).__name__
    return LedgerUnavailable(f"PostgreSQL is unreachable at {safe_url(url)}: {reason}")


def _is_connect(error: sa_exc.OperationalError) -> bool:
    text = str(error.orig).lower()
    return any(
        word in text for word in ("connection", "connect", "server closed", "terminating", "shutting down")
    )


@contextlib.contextmanager
def transaction(settings: Settings | None = None) -> Iterator[sa.Connection]:
    """A connection in a transaction that commits on success."""
    settings = settings or get_settings()
    with ledger_errors(settings.database_url), engine(settings).begin() as conn:
        yield conn


@contextlib.contextmanager
def pooled(settings: Settings | None = None) -> Iterator[psycopg.Connection[Any]]:
    """One of the pool's connections as psycopg's own, in autocommit: the single submit's path.

    Unlike ``direct`` (a connection per thread, for the worker's few threads) it stays within
    the pool's bound, whatever a producer's threads; unlike ``autocommit`` nothing of
    SQLAlchemy's per-statement work runs (its connection object, events, result rows: about
    40 µs of a single submit's 400 here). A connection that fails is invalidated, so the pool
    replaces it, and ``LedgerUnavailable`` raised; the connection returns to the pool out of
    autocommit, as every other user of the pool expects it.
    """
    import psycopg

    settings = settings or get_settings()
    try:
        fairy = engine(settings).raw_connection()
    except psycopg.OperationalError as error:  # the pool connects: the driver's error, unwrapped
        raise unavailable(settings.database_url, error) from error
    conn = fairy.driver_connection
    assert isinstance(conn, psycopg.Connection)
    try:
        conn.autocommit = True
        yield conn
    except psycopg.OperationalError as error:
        fairy.invalidate(error)
        raise unavailable(settings.database_url, error) from error
    finally:
        try:
            if not conn.closed and conn.autocommit:
                conn.autocommit = False
        except psycopg.Error:  # interrupted mid-statement: the connection is not reusable
            fairy.invalidate()
        fairy.close()


@contextlib.contextmanager
def autocommit(settings: Settings | None = None) -> Iterator[sa.Connection]:
    """A connection whose every statement commits on its own: one round trip per statement.

    The ledger's transitions are single statements (data-modifying CTEs), so
    they are atomic without BEGIN and COMMIT.
    """
    settings = settings or get_settings()
    with ledger_errors(settings.database_url), engine(settings).connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@functools.cache
def _sessionmaker(url: str) -> sessionmaker[Session]:
    from sqlalchemy.orm import sessionmaker  # only processes that run job bodies need the ORM

    return sessionmaker(bind=_engine(url), expire_on_commit=False)


def session(settings: Settings | None = None) -> Session:
    """A new ORM session on the ledger's engine (job bodies get one of these)."""
    return _sessionmaker((settings or get_settings()).database_url)()
