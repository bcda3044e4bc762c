"""What the ledger's statements share: bound parameters, the hot-path executor, the attempt history.

The worker's hot path (claim and finish) runs each statement on a psycopg
connection of its own (``jobs.db.direct``) as a server-side prepared
statement: compiled once to SQL text by SQLAlchemy (``prepared``), then only
executed (``execute``). The single submit's INSERT is compiled once the same
way and sent as text on a pooled connection (``execute_text``). Every other
statement runs on a SQLAlchemy connection.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects import postgresql as pg

from jobs.schema import job_attempts, jobs, limits

__all__ = [
    "Executor",
    "any_id",
    "close_attempt",
    "execute",
    "execute_all",
    "execute_text",
    "json_param",
    "now",
    "param",
    "seconds",
    "seconds_since",
    "under_a_limit",
]

now = sa.func.now

#: Where a transition runs: a SQLAlchemy connection, or for the worker's hot path a psycopg
#: connection of its own (``jobs.db.direct``) on which the statement is prepared once.
Executor = sa.Connection | psycopg.Connection[Any]


def seconds(value: float) -> sa.BindParameter[timedelta]:
    """``value`` seconds as an interval parameter."""
    return sa.bindparam(None, timedelta(seconds=value), type_=sa.Interval)


def seconds_since(start: Any, end: Any) -> sa.ColumnElement[float]:
    """The seconds from ``start`` to ``end``, as a float column."""
    return sa.cast(sa.func.extract("epoch", end - start), sa.Float)


def param(name: str, type_: Any) -> sa.BindParameter[Any]:
    """A named parameter of a hot statement (``w_*`` names are given per execution)."""
    return sa.bindparam(name, type_=type_)


def json_param(name: str) -> sa.BindParameter[Any]:
    """A named JSONB parameter (``None`` is SQL NULL, not JSON null)."""
    return sa.bindparam(name, type_=pg.JSONB(none_as_null=True))


def under_a_limit() -> sa.ColumnElement[bool]:
    """A job is under a limit: it was created so, or a limit (set since) names its kind or queue."""
    return sa.or_(
        jobs.c.limited.is_(True),
        sa.exists().where(sa.or_(limits.c.kind == jobs.c.kind, limits.c.queue == jobs.c.queue)),
    )


def any_id(ids: Iterable[uuid.UUID]) -> sa.ColumnElement[bool]:
    """``id = ANY(:ids)``: one array parameter, however many ids."""
    return jobs.c.id == sa.any_(sa.bindparam(None, list(ids), type_=pg.ARRAY(sa.Uuid)))


def close_attempt(
    job_id: Any,
    attempt: Any,
    outcome: str,
    *,
    error: Any = None,
    open_only: bool = True,
    when: Iterable[sa.ColumnElement[bool]] = (),
    at: Any = None,
) -> sa.Update:
    """The attempt history's half of a transition: attempt ``attempt`` of ``job_id`` ended with
    ``outcome`` (and ``error``), now. Every transition that ends an attempt writes it in the same
    statement as the job's row, as a data-modifying CTE; ``open_only`` leaves an attempt that is
    already closed alone; ``at``: when it ended (the transaction's ``now()`` unless given)."""
    statement = sa.update(job_attempts).where(
        job_attempts.c.job_id == job_id, job_attempts.c.attempt == attempt, *when
    )
    if open_only:
        statement = statement.where(job_attempts.c.outcome.is_(None))
    return statement.values(outcome=outcome, finished_at=now() if at is None else at, error=error)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A statement compiled once to SQL text, with its constant parameters bound."""

    sql: str
    constants: dict[str, Any]
    json_names: frozenset[str]

    def params(self, values: dict[str, Any]) -> dict[str, Any]:
        merged = dict(self.constants)
        for name, value in values.items():
            merged[name] = Jsonb(value) if name in self.json_names and value is not None else value
        return merged


@functools.cache
def _prepared(statement: sa.Select[Any] | sa.Insert | sa.Update) -> _Prepared:
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    dialect = PGDialect_psycopg()  # type: ignore[no-untyped-call]  # SQLAlchemy: __init__ unannotated
    compiled = statement.compile(dialect=dialect)
    json_names = frozenset(
        name for name, bind in compiled.binds.items() if isinstance(bind.type, sa.JSON | pg.JSONB)
    )
    constants = {
        name: Jsonb(value) if name in json_names and value is not None else value
        for name, value in compiled.construct_params(_check=False).items()
        if not name.startswith("w_")
    }
    return _Prepared(str(compiled), constants, json_names)


def execute(conn: Executor, statement: sa.Select[Any], params: dict[str, Any]) -> Any:
    """Run a hot statement; returns its first row (attribute access by column name) or ``None``."""
    if isinstance(conn, sa.Connection):
        return conn.execute(statement, params).first()
    prepared = _prepared(statement)
    return conn.execute(prepared.sql, prepared.params(params), prepare=True).fetchone()


def execute_all(
    conn: psycopg.Connection[Any], statement: sa.Select[Any] | sa.Update, params: dict[str, Any]
) -> list[Any]:
    """Run a hot statement on a psycopg connection (prepared once); returns all its rows."""
    prepared = _prepared(statement)
    return conn.execute(prepared.sql, prepared.params(params), prepare=True).fetchall()


def execute_text(conn: Executor, statement: sa.Select[Any] | sa.Insert, params: dict[str, Any]) -> Any:
    """Run a hot statement as its compiled text; returns its first row or ``None``.

    On a SQLAlchemy connection its error handling and connection invalidation stay
    (``exec_driver_sql``); its per-call work (cache key, compiled-cache lookup, bind
    processing) does not, which halves the CPU of a single submit's INSERT, and psycopg
    prepares the text on each pooled connection after a few executions. On a psycopg
    connection (``db.pooled``, ``db.direct``) the text is prepared at once and nothing of
    SQLAlchemy runs. Parameters go to psycopg as they are: the statement casts each one.
    """
    prepared = _prepared(statement)
    if isinstance(conn, sa.Connection):
        return conn.exec_driver_sql(prepared.sql, prepared.params(params)).first()
    return conn.execute(prepared.sql, prepared.params(params), prepare=True).fetchone()
