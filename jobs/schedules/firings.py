"""A schedule's firings: the jobs it submits, one per slot, and reading them back from the ledger.

A firing is an ordinary job whose (schedule, slot) pair is unique in the
ledger, so a slot never fires twice, even with two leaders at once. Its
``submitted_by`` says which schedule fired it, and whether by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from jobs import db
from jobs.ledger import ACTIVE_STATES
from jobs.schema import jobs
from jobs.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from jobs.producer import JobId, Producer

__all__ = ["MANUAL", "Firing", "busy_firing", "fire", "fired_by", "is_manual", "recent_firings"]

MANUAL = "manual"


def fired_by(name: str, manual_by: str | None = None) -> str:
    """The ``submitted_by`` of a firing: ``schedule:NAME``, or ``schedule:NAME manual (WHO)``."""
    return f"schedule:{name}" if manual_by is None else f"schedule:{name} {MANUAL} ({manual_by})"


def is_manual(submitted_by: str | None) -> bool:
    return bool(submitted_by) and f" {MANUAL} (" in str(submitted_by)


def fire(producer: Producer, session: Session, row: Any, slot: datetime, *, submitted_by: str) -> JobId:
    """Submit one firing of a schedule row for ``slot``, in ``session``'s transaction.

    The (schedule, slot) pair is unique: a slot fired before returns that job, with ``duplicate`` set.
    """
    return producer.submit(
        row.kind,
        row.payload,
        queue=row.queue,
        priority=row.priority,
        session=session,
        schedule_name=row.name,
        schedule_slot=slot,
        submitted_by=submitted_by,
    )


def busy_firing(conn: sa.Connection, name: str) -> tuple[str, str] | None:
    """A firing of the schedule still queued or running (or waiting to), as ``(job id, state)``."""
    row = conn.execute(
        sa.select(jobs.c.id, jobs.c.state)
        .where(jobs.c.schedule_name == name, jobs.c.state.in_(ACTIVE_STATES))
        .limit(1)
    ).first()
    return None if row is None else (str(row.id), str(row.state))


@dataclass(frozen=True, slots=True)
class Firing:
    """One job a schedule fired, as ``jobs schedule show`` lists it."""

    id: str
    slot: datetime
    state: str
    created_at: datetime
    manual: bool

    def as_dict(self) -> dict[str, Any]:
        """The firing as ``--json`` prints it."""
        return asdict(self)


def recent_firings(settings: Settings, name: str, limit: int = 10) -> list[Firing]:
    """The newest jobs a schedule fired, newest slot first."""
    with db.transaction(settings) as conn:
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.schedule_slot, jobs.c.state, jobs.c.created_at, jobs.c.submitted_by)
            .where(jobs.c.schedule_name == name)
            .order_by(jobs.c.schedule_slot.desc())
            .limit(limit)
        ).all()
    return [
        Firing(
            id=str(row.id),
            slot=row.schedule_slot,
            state=row.state,
            created_at=row.created_at,
            manual=is_manual(row.submitted_by),
        )
        for row in rows
    ]
