"""Messages for a kind this worker does not know: recorded in the ledger as ``failed``.

Celery drops such a message (it logs "Received unregistered task", rejects
the message without requeue and sends the ``task_unknown`` signal). Without
this hook the job would vanish: a foreign message would leave no trace in the
ledger, and a job the producer submitted would wait as ``queued`` until the
republisher sent it again. The handler records the outcome instead:

- no ledger row (a plain Celery ``send_task``): a ``failed`` row is inserted
  with the message's id, kind, queue and payload, reason "unknown kind …";
- a ``queued`` row: it is claimed and failed, through the same transitions a
  worker uses, so its attempt history says what happened;
- a row in any other state (another worker runs it, or it is finished): left
  as it is.

The worker keeps running whatever happens here. If PostgreSQL is unreachable
the message is gone all the same (Celery rejected it before the signal); a
submitted job then stays ``queued`` and the republisher sends it again later.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from celery import signals
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs import db, ledger
from jobs.errors import JobsError
from jobs.schema import jobs
from jobs.settings import Settings, get_settings

__all__ = ["connect", "record_unknown"]

log = logging.getLogger("jobs.worker")

#: The lease of the claim that precedes the failure: the two statements follow each other at once.
_LEASE = 60.0


def record_unknown(
    settings: Settings,
    *,
    job_id: uuid.UUID,
    kind: str,
    queue: str,
    priority: int,
    payload: dict[str, Any],
    worker: str,
) -> str:
    """Record that no worker here implements ``kind``; returns what happened to the job."""
    error = {
        "type": "UnknownKind",
        "message": f"unknown kind {kind!r}: no worker consuming queue {queue!r} implements it",
    }
    row = {
        "id": job_id,
        "kind": kind,
        "queue": queue,
        "priority": min(max(priority, 0), 9),
        "payload": payload,
        "state": "failed",
        "max_attempts": settings.max_attempts,
        "submitted_by": "adopted",
        "error": error,
        "finished_at": datetime.now(UTC),
    }
    with db.autocommit(settings) as conn:
        inserted = conn.execute(
            pg_insert(jobs)
            .values(row)
            .on_conflict_do_nothing(index_elements=[jobs.c.id])
            .returning(jobs.c.id)
        ).first()
        if inserted is not None:
            return "recorded as failed"
        claimed = ledger.claim(conn, job_id, worker=worker, lease=_LEASE)
        if claimed is None:
            return "left as it is (not queued)"
        ledger.fail(conn, job_id, claimed.attempt, error)
        return "failed"


def _on_unknown(sender: Any = None, message: Any = None, name: str = "", id: str = "", **_: Any) -> None:
    """The ``task_unknown`` handler: never raises into the worker's consumer."""
    try:
        job_id = uuid.UUID(str(id))
    except ValueError:
        log.error("message for unknown kind %r with id %r (not a UUID) dropped", name, id)
        return
    try:
        delivery = getattr(message, "delivery_info", None) or {}
        properties = getattr(message, "properties", None) or {}
        outcome = record_unknown(
            get_settings(),
            job_id=job_id,
            kind=str(name)[:200],
            queue=str(delivery.get("routing_key") or get_settings().default_queue),
            priority=int(properties.get("priority") or 5),
            payload=_kwargs(message),
            worker=str(getattr(sender, "hostname", None) or "unknown"),
        )
        log.error("job %s of unknown kind %r: %s", job_id, name, outcome)
    except JobsError as error:
        log.error("job %s of unknown kind %r not recorded in the ledger: %s", job_id, name, error)
    except Exception:
        log.exception("job %s of unknown kind %r not recorded in the ledger", job_id, name)


def _kwargs(message: Any) -> dict[str, Any]:
    """The message's keyword arguments if it is a JSON task message, else nothing."""
    try:
        body = message.decode()
    except Exception:  # a refused serializer or a broken body: the payload stays empty
        return {}
    if isinstance(body, list | tuple) and len(body) >= 2 and isinstance(body[1], dict):
        return dict(body[1])
    return {}


def connect() -> None:
    """Connect the handler to Celery's ``task_unknown`` signal (the worker app calls this once)."""
    signals.task_unknown.connect(_on_unknown, weak=False, dispatch_uid="jobs.unknown")
