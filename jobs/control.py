"""Operator actions on jobs: cancel, and replay a finished job as a new one."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

import sqlalchemy as sa

from jobs import db, ledger
from jobs.errors import InvalidTransition, JobNotFound
from jobs.producer import JobId, Producer
from jobs.schema import jobs
from jobs.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["cancel", "replay"]

log = logging.getLogger("jobs.control")

REPLAYABLE = ("failed", "cancelled")


def cancel(settings: Settings, app: Celery, job_id: uuid.UUID) -> str:
    """Cancel a job that has not finished; returns the state it was in.

    A queued, delayed or retrying job is cancelled at once. A running job is
    marked cancelled too (its body's work will not commit) and its worker is
    asked to stop the body.
    """
    with db.transaction(settings) as conn:
        previous = ledger.cancel(conn, job_id)
        if previous is None:
            state = conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()
    if previous is None:
        if state is None:
            raise JobNotFound(f"no job with id {job_id}")
        raise InvalidTransition(f"job {job_id} is already {state}; only unfinished jobs can be cancelled")
    if previous == "running":
        try:
            app.control.revoke(str(job_id), terminate=True, signal="SIGTERM")
        except Exception as error:  # the ledger already says cancelled; stopping the body is best effort
            log.warning("job %s is cancelled but its worker could not be told: %s", job_id, error)
    return previous


def replay(producer: Producer, job_id: uuid.UUID, *, submitted_by: str | None = None) -> JobId:
    """Submit a new job with a failed or cancelled job's kind and payload, linked by ``retry_of``."""
    with db.transaction(producer.settings) as conn:
        row = conn.execute(
            sa.select(
                jobs.c.kind, jobs.c.payload, jobs.c.queue, jobs.c.priority, jobs.c.state, jobs.c.max_attempts
            ).where(jobs.c.id == job_id)
        ).first()
    if row is None:
        raise JobNotFound(f"no job with id {job_id}")
    if row.state not in REPLAYABLE:
        raise InvalidTransition(f"job {job_id} is {row.state}; only failed or cancelled jobs can be retried")
    return producer.submit(
        row.kind,
        row.payload,
        queue=row.queue,
        priority=row.priority,
        max_attempts=row.max_attempts,
        submitted_by=submitted_by,
        retry_of=job_id,
    )
