"""Messages of a kind this worker does not implement: handed back, adopted to wait, or failed.

In a rolling deploy old workers always meet new kinds, and a fleet may split
kinds between workers on one queue. Celery itself drops such a message (it
logs "Received unregistered task", rejects it without requeue and sends a
``task-failed`` event), so the job would fail, or vanish, because of *which*
worker got it. The worker's consumer (``workers.consumer``) sends it here
instead, and what happens depends on the ledger:

- **a queued job**: handed back. No attempt is spent; the message is
  acknowledged and the row marked (``published_at`` cleared,
  ``handed_back_at`` set). The leader's relay publishes it again as soon as a
  live worker that implements the kind consumes its queue (at once when one
  runs now, ``jobs.roster``); until then it waits in the ledger, and
  ``jobs explain`` and ``jobs doctor`` say that no live worker implements it.
- **a job in any other state**: a stale copy (another worker runs it, or it is
  finished or cancelled); acknowledged, nothing changes.
- **no row** (a plain Celery ``send_task``): if a worker of this fleet ever
  implemented the kind, the message is adopted as a queued job that waits
  the same way (its payload is validated by the worker that runs it);
  otherwise it is recorded as ``failed``, "no worker of this fleet has ever
  implemented kind …". A payload the ledger cannot store (a NUL character)
  is kept escaped in a ``failed`` row. Every message leaves a row.
- **PostgreSQL unreachable**: the message goes back to the broker after a
  pause (rejected with requeue), so nothing is lost.

The worker keeps running whatever happens here.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from jobs import counters, db, jsonsafe, ledger, roster
from jobs.errors import ErrorRecord, LedgerUnavailable
from jobs.settings import Settings

__all__ = [
    "Foreign",
    "Outcome",
    "bad_id_error",
    "handle",
    "job_id_of",
    "log_outcome",
    "parse",
    "refuse",
    "unavailable",
]

log = logging.getLogger("jobs.worker")


@dataclass(frozen=True, slots=True)
class Foreign:
    """What the worker could read of a message whose kind it does not implement."""

    job_id: uuid.UUID
    kind: str
    queue: str
    priority: int
    payload: dict[str, Any]
    bad_id: str | None = None
    """The message's task id when it is not a UUID (``job_id`` is then derived from it)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of the message: ``handed_back``, ``adopted``, ``stale``, ``failed``."""

    what: str
    detail: str
    error: ErrorRecord | None = None


#: Job ids derived from task ids that are not UUIDs: the same id for every copy of a message.
_NAMESPACE = uuid.UUID("0b3c5c4e-7f4b-4a43-9a1d-6a0f1f3b2c11")


def job_id_of(task_id: str) -> tuple[uuid.UUID, str | None]:
    """The ledger id for a Celery task id, and the task id itself when it is not a UUID."""
    try:
        return uuid.UUID(task_id), None
    except ValueError:
        # surrogatepass: any text a message can carry hashes (a lone surrogate included).
        return uuid.uuid5(_NAMESPACE, task_id.encode("utf-8", "surrogatepass")), task_id[:200]


def parse(headers: Any, delivery_info: Any, properties: Any, body: Any, default_queue: str) -> Foreign | None:
    """The message's job id, kind, queue, priority and keyword arguments; ``None`` without an id."""
    headers = headers if isinstance(headers, dict) else {}
    if headers.get("id") is None:
        return None
    job_id, bad_id = job_id_of(str(headers["id"]))
    info = delivery_info if isinstance(delivery_info, dict) else {}
    props = properties if isinstance(properties, dict) else {}
    try:
        priority = min(max(int(props.get("priority") or 5), 0), 9)
    except (TypeError, ValueError):
        priority = 5
    kwargs = body[1] if isinstance(body, list | tuple) and len(body) > 1 and isinstance(body[1], dict) else {}
    return Foreign(
        job_id=job_id,
        kind=str(headers.get("task"))[:200],
        queue=str(info.get("routing_key") or default_queue)[:200],
        priority=priority,
        payload=dict(kwargs),
        bad_id=bad_id,
    )


def _never_implemented(kind: str) -> ErrorRecord:
    return {
        "type": "UnknownKind",
        "message": f"unknown kind {kind!r}: no worker of this fleet has ever implemented it",
    }


def _row(settings: Settings, message: Foreign) -> ledger.NewJob:
    return ledger.NewJob(
        id=message.job_id,
        kind=jsonsafe.escaped(message.kind),
        queue=jsonsafe.escaped(message.queue),
        priority=message.priority,
        payload=jsonsafe.escaped(message.payload),
        state="queued",
        max_attempts=settings.max_attempts,
        submitted_by="adopted",
    )


#: The ``kind`` label a refused message of a kind this worker lacks is counted under: the name is
#: the sender's to choose, and a flood of made-up names must not make a metric series each.
UNKNOWN_KIND_LABEL = "(unknown)"


def refuse(
    settings: Settings, message: Foreign, error: ErrorRecord, *, count_as: str | None = None
) -> Outcome:
    """Record a message that cannot run as a ``failed`` job with ``error`` (a copy is left alone);
    it is counted under its kind, or ``count_as``."""
    error = jsonsafe.escaped(error)  # a reason may quote what was refused
    row = _row(settings, message)
    with db.autocommit(settings) as conn:
        if ledger.record_refused(conn, row, error):
            label = count_as or row.kind
            counters.process_tally(settings).count(counters.FINISHED, label, row.queue, "failed")
            return Outcome("failed", error["message"], error)
    return Outcome("stale", "a copy of a job that is already recorded; ignored")


def bad_id_error(task_id: str) -> ErrorRecord:
    return {
        "type": "InvalidJobOptions",
        "message": f"task id {task_id!r} is not a UUID: the ledger's job ids are UUIDs"
        " (let Celery choose the task id, or pass str(uuid.uuid4()))",
    }


def handle(settings: Settings, message: Foreign) -> Outcome:
    """Hand back, adopt or fail one message; raises ``LedgerUnavailable`` (the caller requeues it)."""
    if message.bad_id is not None:
        return refuse(settings, message, bad_id_error(message.bad_id))
    stale = Outcome("stale", "a copy of a job that is not queued; ignored")
    with db.autocommit(settings) as conn:
        if ledger.hand_back(conn, message.job_id):
            what = "handed_back"
        elif ledger.state_of(conn, message.job_id) is not None:
            return stale
        elif (bad := jsonsafe.unstorable(_fields(message))) is not None:
            invalid: ErrorRecord = {"type": "InvalidPayload", "message": f"{bad}; kept escaped"}
            return refuse(settings, message, invalid, count_as=UNKNOWN_KIND_LABEL)
        elif not roster.ever_implemented(conn, [message.kind]):
            return refuse(settings, message, _never_implemented(message.kind), count_as=UNKNOWN_KIND_LABEL)
        elif ledger.adopt(conn, _row(settings, message), handed_back=True):
            what = "adopted"
        else:
            return stale
        live = roster.implementers(conn, message.kind, dead_after=settings.worker_dead_after)
    return Outcome(what, _waits_for(message, live))


def _fields(message: Foreign) -> dict[str, Any]:
    return {"kind": message.kind, "queue": message.queue, "payload": message.payload}


def _waits_for(message: Foreign, live: list[roster.Member]) -> str:
    on_queue = [member.name for member in live if message.queue in member.queues]
    if on_queue:
        return f"{len(on_queue)} live worker(s) on queue {message.queue!r} implement it; the relay sends it"
    if live:
        return (
            f"no live worker consuming queue {message.queue!r} implements it ({len(live)} on other queues);"
            " it waits in the ledger"
        )
    return "no live worker implements it; it waits in the ledger until one starts (or it is cancelled)"


def log_outcome(message: Foreign, outcome: Outcome, worker: str) -> None:
    """One line per message: INFO for a job handed back or adopted, ERROR for a refused one."""
    level = logging.ERROR if outcome.what == "failed" else logging.INFO
    what = {
        "handed_back": "handed back (this worker does not implement its kind, no attempt spent)",
        "adopted": "adopted from a foreign message and handed back (this worker does not implement its kind)",
        "stale": "not run here",
        "failed": "refused",
    }[outcome.what]
    log.log(
        level,
        "job %s (%s) on queue %s %s: %s",
        message.job_id,
        message.kind,
        message.queue,
        what,
        outcome.detail,
        extra={"job_id": str(message.job_id), "kind": message.kind, "queue": message.queue, "worker": worker},
    )


def unavailable(message: Foreign, error: LedgerUnavailable) -> None:
    log.error(
        "job %s (%s) of a kind this worker lacks could not be handed back (%s); the message returns"
        " to the broker",
        message.job_id,
        message.kind,
        error,
    )
