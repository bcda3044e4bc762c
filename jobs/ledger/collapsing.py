"""Submissions that collapse into a job the ledger holds: a kind's unique window and its debounce.

A submission is identified by its content key (``jobs.limits.content_key``).
Each function here runs inside the submitting transaction, after
``lock_content`` has taken the transaction-scoped advisory lock on that key:
two submitters of the same content queue on the lock, and the second one's
look-up (a new statement, so a new snapshot under READ COMMITTED) sees the first
one's committed job. The semantics are in docs/flow-control.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from jobs.ledger.statements import now, seconds
from jobs.schema import jobs
from jobs.states import ACTIVE_STATES

__all__ = ["Pushed", "lock_content", "push_debounced", "unique_holder"]

#: The advisory locks' first key: one namespace per mechanism, so a unique key and a debounce key
#: never wait on each other, nor on any other advisory lock of the platform (those take one bigint).
_NAMESPACES = {"unique": "jobs.unique", "debounce": "jobs.debounce"}


def lock_content(conn: sa.Connection, mechanism: Literal["unique", "debounce"], key: str) -> None:
    """Wait for the lock on one content key and hold it until the transaction ends.

    Two different keys that hash alike only wait on each other for a moment; they never share a job.
    """
    namespace = sa.func.hashtext(sa.literal(_NAMESPACES[mechanism], sa.Text))
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(namespace, sa.func.hashtext(key))))


def unique_holder(conn: sa.Connection, kind: str, key: str, period: float | None) -> uuid.UUID | None:
    """The newest job of ``kind`` with the unique key ``key`` created less than ``period`` seconds ago
    (whatever its state), or, when ``period`` is ``None``, still unfinished; ``None`` if there is none."""
    recent: sa.ColumnElement[bool]
    if period is None:
        recent = jobs.c.state.in_(ACTIVE_STATES)
    else:
        recent = jobs.c.created_at > now() - seconds(period)
    found: uuid.UUID | None = conn.execute(
        sa.select(jobs.c.id)
        .where(jobs.c.unique_key == key, jobs.c.kind == kind, recent)
        .order_by(jobs.c.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return found


@dataclass(frozen=True, slots=True)
class Pushed:
    """What ``push_debounced`` did: the job it pushed (``None``: none was waiting) and the time a job
    debounced now is due, on the server's clock (``now() + period``)."""

    id: uuid.UUID | None
    due: datetime


def push_debounced(conn: sa.Connection, kind: str, key: str, payload_json: str, period: float) -> Pushed:
    """Give the ``scheduled`` job of ``kind`` with the debounce key ``key`` this payload and push its
    ``not_before`` to ``period`` seconds from now, in one statement.

    A job the stager took meanwhile is no longer ``scheduled``: the UPDATE
    waits on its row lock, finds it staged and leaves it alone (``id`` is then
    ``None``: the caller inserts a new job, due at ``due``). The key is derived
    from the debounced fields, which the new payload shares: no other column
    depends on the payload.
    """
    due = now() + seconds(period)
    waiting = (
        sa.select(jobs.c.id)
        .where(jobs.c.debounce_key == key, jobs.c.kind == kind, jobs.c.state == "scheduled")
        .order_by(jobs.c.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    payload = sa.cast(sa.bindparam("payload_json", payload_json, type_=sa.Text), pg.JSONB)
    pushed = (
        sa.update(jobs)
        .where(jobs.c.id == waiting, jobs.c.state == "scheduled")
        .values(payload=payload, not_before=due)
        .returning(jobs.c.id)
        .cte("pushed")
    )
    pushed_id = sa.select(pushed.c.id).scalar_subquery()
    row = conn.execute(sa.select(pushed_id.label("id"), due.label("due"))).one()
    return Pushed(row.id, row.due)
