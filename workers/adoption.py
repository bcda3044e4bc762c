"""A delivery the claim found nothing for: a duplicate, a stale redelivery, or a message from outside.

A message whose id the ledger does not know was sent by a plain Celery
producer (``send_task``): it is adopted as a queued job and claimed (``held``
for admission, the message acknowledged, when its kind is under a limit), or, if
its payload fails the kind's model or cannot be stored as it came (a NUL
character), recorded as ``failed`` with the reason and a safely escaped copy.
A copy of a job the ledger knows runs nothing (``NotRun``); a copy of a job
whose worker was lost on its last attempt fails it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy as sa

from jobs import counters, db, jsonsafe, ledger
from jobs.errors import ErrorRecord, InvalidPayload
from jobs.kinds import Registry, lease_for
from jobs.settings import Settings
from workers.outcomes import AttemptFailed, NotRun, publish_admitted

__all__ = ["Delivery", "unclaimed"]

log = logging.getLogger("jobs.worker")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the worker received it."""

    job_id: uuid.UUID
    kind: str
    kwargs: dict[str, Any]
    queue: str
    priority: int
    worker: str


def unclaimed(
    conn: sa.Connection, settings: Settings, registry: Registry, delivery: Delivery
) -> ledger.Claimed:
    """The claim found nothing: a duplicate, a stale redelivery, or a message from outside.

    Returns the job claimed after adopting a message from outside; raises ``NotRun`` or
    ``AttemptFailed`` otherwise.
    """
    row = ledger.status_of(conn, delivery.job_id)
    if row is None:
        return _adopt(conn, settings, registry, delivery)
    if row.state == "running" and row.attempt >= row.max_attempts:
        rescued = ledger.rescue_expired(conn, only=delivery.job_id, tally=counters.process_tally(settings))
        if rescued:
            with db.transaction(settings) as tx:  # under a limit: the next job's turn
                admitted = ledger.release(tx, [delivery.job_id], tally=counters.process_tally(settings))
            publish_admitted(settings, admitted)  # after the commit
            message = "worker lost on its last attempt"
            log.error(
                "job %s %s attempt %d/%d failed: %s",
                delivery.job_id,
                delivery.kind,
                row.attempt,
                row.max_attempts,
                message,
                extra={"job_id": str(delivery.job_id), "kind": delivery.kind, "state": "failed"},
            )
            raise AttemptFailed("failed", "WorkerLost", message)
    log.info(
        "job %s (%s) delivered again while %s; ignored (duplicate delivery)",
        delivery.job_id,
        delivery.kind,
        row.state,
    )
    raise NotRun(row.state)


def _adopt(conn: sa.Connection, settings: Settings, registry: Registry, delivery: Delivery) -> ledger.Claimed:
    """A message sent by a plain Celery producer: record it in the ledger, then claim it.

    A payload that fails the kind's model, or that the ledger cannot store as it came (a NUL
    character), is recorded as ``failed`` with the reason and a safely escaped copy of what was sent.
    """
    kind = registry.get(delivery.kind)

    def row(payload: dict[str, Any]) -> ledger.NewJob:
        return ledger.NewJob(
            id=delivery.job_id,
            kind=kind.name,
            queue=jsonsafe.escaped(delivery.queue),
            priority=min(max(delivery.priority, 0), 9),
            payload=payload,
            state="queued",
            max_attempts=kind.max_attempts or settings.max_attempts,
            submitted_by="adopted",
        )

    try:
        payload = kind.dump(kind.validate(delivery.kwargs))
        bad = jsonsafe.unstorable({"queue": delivery.queue, "payload": payload})
        if bad is not None:
            raise InvalidPayload(f"{bad}; kept escaped")
    except InvalidPayload as refused:
        error: ErrorRecord = {"type": "InvalidPayload", "message": refused.message}
        refused_row = row(jsonsafe.escaped(delivery.kwargs))
        if not ledger.record_refused(conn, refused_row, error):
            raise NotRun(ledger.state_of(conn, delivery.job_id)) from None
        counters.process_tally(settings).count(
            counters.FINISHED, refused_row.kind, refused_row.queue, "failed"
        )
        log.error("job %s (%s) refused: %s", delivery.job_id, delivery.kind, refused.message)
        raise AttemptFailed("failed", "InvalidPayload", refused.message) from None
    if ledger.applies(conn, kind.name, delivery.queue):
        _adopt_held(settings, row(payload))
    if ledger.adopt(conn, row(payload)):
        log.info("job %s (%s) adopted into the ledger", delivery.job_id, delivery.kind)
    claimed = ledger.claim(conn, delivery.job_id, worker=delivery.worker, lease=lease_for(settings, kind))
    if claimed is None:
        raise NotRun(ledger.state_of(conn, delivery.job_id))
    return claimed


def _adopt_held(settings: Settings, job: ledger.NewJob) -> NoReturn:
    """A foreign message of a kind under a limit: the job waits ``held`` for admission like any
    other, and this message is acknowledged without running (the admission publishes the job)."""
    with db.transaction(settings) as conn:
        adopted = ledger.adopt(conn, job, held=True)
        admitted = ledger.admit_jobs(conn, [job.id], ledger.hold(conn, [job.id])) if adopted else []
        state = "held" if adopted else ledger.state_of(conn, job.id)
    if adopted:
        log.info("job %s (%s) adopted into the ledger; it waits for its limits", job.id, job.kind)
    publish_admitted(settings, admitted)
    raise NotRun(state)
