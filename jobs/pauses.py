"""Paused queues, kept in the ledger so that a pause survives worker restarts.

``jobs queue pause NAME`` writes a row here; workers stop consuming a paused
queue (jobs already running finish) and consume it again once it is resumed.
Jobs keep arriving in a paused queue: they are accepted and wait, queued.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from jobs import db
from jobs.schema import queue_pauses
from jobs.settings import Settings

__all__ = ["Pause", "pause", "paused", "resume"]


@dataclasses.dataclass(frozen=True, slots=True)
class Pause:
    queue: str
    paused_at: dt.datetime
    paused_by: str | None
    reason: str | None


def pause(settings: Settings, queue: str, *, by: str | None = None, reason: str | None = None) -> bool:
    """Pause ``queue``; returns False when it was already paused (the first pause is kept)."""
    statement = (
        insert(queue_pauses)
        .values(queue=queue, paused_by=by, reason=reason)
        .on_conflict_do_nothing(index_elements=[queue_pauses.c.queue])
        .returning(queue_pauses.c.queue)
    )
    with db.transaction(settings) as conn:
        return conn.execute(statement).first() is not None


def resume(settings: Settings, queue: str) -> bool:
    """Resume ``queue``; returns False when it was not paused."""
    with db.transaction(settings) as conn:
        return conn.execute(sa.delete(queue_pauses).where(queue_pauses.c.queue == queue)).rowcount == 1


def paused(conn: sa.Connection) -> dict[str, Pause]:
    """Every paused queue, by name."""
    rows = conn.execute(sa.select(queue_pauses).order_by(queue_pauses.c.queue))
    return {row.queue: Pause(row.queue, row.paused_at, row.paused_by, row.reason) for row in rows}
