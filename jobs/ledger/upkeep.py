"""The ledger's upkeep and its quickest questions: where a job stands, and pruning finished jobs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from jobs.ledger.statements import any_id, now, seconds
from jobs.schema import jobs
from jobs.states import TERMINAL_STATES, State

__all__ = ["Status", "prune", "state_of", "states_of", "status_of"]


@dataclass(frozen=True, slots=True)
class Status:
    """Where a job stands: its state, how many of its attempts it has used, and its queue."""

    state: State
    attempt: int
    max_attempts: int
    queue: str


def status_of(conn: sa.Connection, job_id: uuid.UUID) -> Status | None:
    """The job's state, attempts and queue, or ``None`` when the ledger has no such job."""
    row = conn.execute(
        sa.select(jobs.c.state, jobs.c.attempt, jobs.c.max_attempts, jobs.c.queue).where(jobs.c.id == job_id)
    ).first()
    return None if row is None else Status(row.state, row.attempt, row.max_attempts, row.queue)


def state_of(conn: sa.Connection, job_id: uuid.UUID) -> State | None:
    """The job's state, or ``None`` when the ledger has no such job."""
    return conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()


def states_of(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, State]:
    """The states of the jobs among ``ids`` that the ledger has."""
    if not ids:
        return {}
    return {row.id: row.state for row in conn.execute(sa.select(jobs.c.id, jobs.c.state).where(any_id(ids)))}


def prune(conn: sa.Connection, *, states: Sequence[str], older_than: float, limit: int = 1000) -> int:
    """Delete up to ``limit`` jobs in ``states`` finished more than ``older_than`` seconds ago."""
    assert set(states) <= set(TERMINAL_STATES), "only finished jobs are ever pruned"
    cutoff = now() - seconds(older_than)
    old = (
        sa.select(jobs.c.id)
        .where(
            jobs.c.state.in_(list(states)),
            jobs.c.created_at < cutoff,
            jobs.c.finished_at < cutoff,
            jobs.c.workflow_id.is_(None),  # a workflow's steps go with it (``prune_workflows``)
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return conn.execute(sa.delete(jobs).where(jobs.c.id.in_(old.scalar_subquery()))).rowcount
