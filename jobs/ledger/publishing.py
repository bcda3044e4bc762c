"""Publishing's half of the ledger: jobs taken to be put on the broker, and given back if it refused.

Every job is marked published (``published_at``) in the same statement that
takes it, before its message is sent (``jobs.publisher``): a failed send is
given back with ``mark_unpublished`` for the relay, and a sender that dies in
between is covered by ``republish_stale``. The leader's stager, relay,
republisher and re-drive take their jobs here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from jobs import roster
from jobs.ledger.lifecycle import sources
from jobs.ledger.statements import any_id, now, seconds, under_a_limit
from jobs.schema import jobs, queue_pauses

__all__ = ["Published", "mark_unpublished", "republish_stale", "stage_due", "take_unpublished"]


@dataclass(frozen=True, slots=True)
class Published:
    """What the publisher needs to put a job on the broker."""

    id: uuid.UUID
    kind: str
    queue: str
    priority: int
    payload: dict[str, Any]
    payload_json: str | None = None  # the payload serialized once, when the producer has it


_PUBLISH_COLUMNS = (jobs.c.id, jobs.c.kind, jobs.c.queue, jobs.c.priority, jobs.c.payload)


def _take(conn: sa.Connection, due: sa.Select[Any], values: dict[str, Any]) -> list[Published]:
    """Mark the selected jobs published (and apply ``values``) in one statement; returns them.

    ``published_at`` is set before the message is sent: if sending fails the
    caller clears it again (``mark_unpublished``), and if the caller dies in
    between, ``republish_stale`` sends the job again later. Either way the job
    is never left without a message, and duplicates are absorbed by the claim.
    """
    rows = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id.in_(due.with_for_update(skip_locked=True).scalar_subquery()))
        .values(published_at=now(), **values)
        .returning(*_PUBLISH_COLUMNS)
    ).all()
    return [Published(*row) for row in rows]


def stage_due(conn: sa.Connection, *, limit: int = 1000) -> list[Published]:
    """Move due ``scheduled`` and ``retrying`` jobs to ``queued``, to be published; those under a
    limit are left to ``admission.hold_due`` (they wait ``held`` for admission)."""
    due = (
        sa.select(jobs.c.id)
        .where(jobs.c.state.in_(sources("stage")), jobs.c.not_before <= now(), ~under_a_limit())
        .order_by(jobs.c.not_before)
        .limit(limit)
    )
    return _take(conn, due, {"state": "queued"})


def take_unpublished(
    conn: sa.Connection, *, older_than: float, alive_within: float, limit: int = 1000
) -> list[Published]:
    """Queued jobs whose message is not on the broker, to be published now.

    Two kinds: jobs committed more than ``older_than`` seconds ago whose message never
    went out (Redis was down, or the producer died), and jobs a worker handed back
    because it does not implement their kind, once a live worker (heartbeat within
    ``alive_within`` seconds) that consumes their queue implements it. A handed-back
    job whose kind no live worker implements stays in the ledger: publishing it would
    only bounce it between workers that cannot run it.
    """
    never_sent = sa.and_(jobs.c.handed_back_at.is_(None), jobs.c.created_at < now() - seconds(older_than))
    handed_back = sa.and_(
        jobs.c.handed_back_at.is_not(None),
        roster.live_implementer(jobs.c.kind, jobs.c.queue, alive_within),
    )
    due = (
        sa.select(jobs.c.id)
        .where(jobs.c.state == "queued", jobs.c.published_at.is_(None), sa.or_(never_sent, handed_back))
        .order_by(jobs.c.created_at)
        .limit(limit)
    )
    return _take(conn, due, {})


def republish_stale(
    conn: sa.Connection, *, older_than: float, limit: int = 1000, paused_too: bool = False
) -> list[Published]:
    """Queued jobs published more than ``older_than`` seconds ago and still not taken by a worker.

    Their message may be lost (a producer died between its commit and its
    publish, or Redis lost data): they are published again, at most once per
    ``older_than``. A duplicate of a message still in the queue is absorbed by
    the claim. Jobs of a paused queue are left alone: they are waiting on
    purpose, and their messages are in Redis (``paused_too`` takes them as
    well, for the re-drive after Redis lost its data).
    """
    due = sa.select(jobs.c.id).where(
        jobs.c.state == "queued", jobs.c.published_at < now() - seconds(older_than)
    )
    if not paused_too:
        due = due.where(jobs.c.queue.not_in(sa.select(queue_pauses.c.queue)))
    due = due.order_by(jobs.c.published_at).limit(limit)
    return _take(conn, due, {})


def mark_unpublished(conn: sa.Connection, ids: Iterable[uuid.UUID]) -> None:
    """The broker did not take these jobs' messages: the relay publishes them when it returns."""
    id_list = list(ids)
    if id_list:
        conn.execute(
            sa.update(jobs).where(any_id(id_list), jobs.c.state == "queued").values(published_at=None)
        )
