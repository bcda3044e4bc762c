"""One attempt of one job: claim, run the body, finish (docs/architecture.md, "Run path").

This module knows the ledger and the kinds, not Celery: ``workers.task`` wraps
it in a Celery task. Every outcome is one compare-and-set in the ledger; the
body's own database work commits in the same transaction as its success.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from jobs import db, jsonsafe, ledger
from jobs.context import JobContext
from jobs.errors import Fail, InvalidPayload, RetryLater
from jobs.kinds import Kind, Registry, lease_for
from jobs.schema import jobs
from jobs.settings import Settings

__all__ = ["AttemptFailed", "Delivery", "error_record", "record_failure", "run"]

log = logging.getLogger("jobs.worker")

MAX_TRACEBACK = 8000


class AttemptFailed(Exception):
    """The attempt did not succeed, and the ledger already says so (``retrying``, ``failed``,
    ``cancelled``, or '' when the job was no longer this attempt's).

    Raised to Celery so that its events, and Flower, show the task as failed;
    the task declares it in ``throws``, so Celery logs one line, no traceback.
    """

    def __init__(self, state: str, message: str) -> None:
        super().__init__(f"{state or 'not recorded'}: {message}" if message else state or "not recorded")
        self.state = state


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the worker received it."""

    job_id: uuid.UUID
    kind: str
    kwargs: dict[str, Any]
    queue: str
    priority: int
    worker: str


def error_record(error: BaseException, *, reason: str | None = None) -> dict[str, Any]:
    """An exception as the ledger stores it: type, message, traceback."""
    trace = "".join(traceback.format_exception(error))
    return {
        "type": type(error).__name__,
        "message": reason or str(error) or type(error).__name__,
        "traceback": trace[-MAX_TRACEBACK:],
    }


def run(settings: Settings, registry: Registry, delivery: Delivery) -> Any:
    """Run one delivered message through the ledger; returns the job's result.

    ``None`` when there was nothing to run (a duplicate delivery, a finished job);
    ``AttemptFailed`` when the attempt ran (or was refused) and did not succeed.
    """
    declared = registry.get(delivery.kind) if delivery.kind in registry else None
    with db.direct(settings) as direct:
        claimed = ledger.claim(
            direct, delivery.job_id, worker=delivery.worker, lease=lease_for(settings, declared)
        )
    if claimed is None:
        with db.autocommit(settings) as conn:
            claimed = _unclaimed(conn, settings, registry, delivery)
    if claimed is None:
        return None
    # Only kinds with a body are tasks of this worker (workers.task.register_kinds).
    assert declared is not None
    assert declared.body is not None
    return _attempt(settings, declared, claimed, delivery.worker)


def _unclaimed(
    conn: sa.Connection, settings: Settings, registry: Registry, delivery: Delivery
) -> ledger.Claimed | None:
    """The claim found nothing: a duplicate, a stale redelivery, or a message from outside."""
    row = conn.execute(
        sa.select(jobs.c.state, jobs.c.attempt, jobs.c.max_attempts, jobs.c.lease_until).where(
            jobs.c.id == delivery.job_id
        )
    ).first()
    if row is None:
        return _adopt(conn, settings, registry, delivery)
    if row.state == "running" and row.attempt >= row.max_attempts:
        rescued = ledger.rescue_expired(conn, only=delivery.job_id)
        if rescued:
            log.warning("job %s failed: worker lost on its last attempt", delivery.job_id)
            return None
    log.info(
        "job %s (%s) delivered again while %s; ignored (duplicate delivery)",
        delivery.job_id,
        delivery.kind,
        row.state,
    )
    return None


def _adopt(
    conn: sa.Connection, settings: Settings, registry: Registry, delivery: Delivery
) -> ledger.Claimed | None:
    """A message sent by a plain Celery producer: record it in the ledger, then claim it.

    A payload that fails the kind's model, or that the ledger cannot store as it came (a NUL
    character), is recorded as ``failed`` with the reason and a safely escaped copy of what was sent.
    """
    declared = registry.get(delivery.kind)
    row: dict[str, Any] = {
        "id": delivery.job_id,
        "kind": declared.name,
        "queue": jsonsafe.escaped(delivery.queue),
        "priority": min(max(delivery.priority, 0), 9),
        "max_attempts": declared.max_attempts or settings.max_attempts,
        "submitted_by": "adopted",
    }
    try:
        row["payload"] = declared.dump(declared.validate(delivery.kwargs))
        bad = jsonsafe.unstorable({"queue": delivery.queue, "payload": row["payload"]})
        if bad is not None:
            raise InvalidPayload(f"{bad}; kept escaped")
    except InvalidPayload as refused:
        error = {"type": "InvalidPayload", "message": refused.message}
        row["payload"] = jsonsafe.escaped(delivery.kwargs)
        if ledger.record_refused(conn, row, error):
            log.error("job %s (%s) refused: %s", delivery.job_id, delivery.kind, refused.message)
        return None
    if ledger.adopt(conn, row):
        log.info("job %s (%s) adopted into the ledger", delivery.job_id, delivery.kind)
    return ledger.claim(conn, delivery.job_id, worker=delivery.worker, lease=lease_for(settings, declared))


def _log(level: int, claimed: ledger.Claimed, declared: Kind, what: str, *args: Any, **fields: Any) -> None:
    """One line per transition, with the job's fields as ``extra`` (kept as keys by the JSON format)."""
    prefix = "job %s %s attempt %d/%d on queue %s "
    log.log(
        level,
        prefix + what,
        claimed.id,
        declared.name,
        claimed.attempt,
        claimed.max_attempts,
        claimed.queue,
        *args,
        extra={
            "job_id": str(claimed.id),
            "kind": declared.name,
            "attempt": claimed.attempt,
            "max_attempts": claimed.max_attempts,
            "queue": claimed.queue,
            **fields,
        },
    )


def _attempt(settings: Settings, declared: Kind, claimed: ledger.Claimed, worker: str) -> Any:
    assert declared.body is not None
    started = time.monotonic()
    _log(logging.INFO, claimed, declared, "running on %s", worker, state="running", worker=worker)
    try:
        payload = declared.validate(claimed.payload)
    except InvalidPayload as bad:
        state = _finish_error(settings, claimed, bad, retryable=False)
        _log(logging.ERROR, claimed, declared, "failed: %s", bad.message, state="failed")
        raise AttemptFailed(state, bad.message) from None

    ctx = JobContext(
        job_id=claimed.id,
        kind=declared.name,
        attempt=claimed.attempt,
        max_attempts=claimed.max_attempts,
        logger=logging.getLogger(f"jobs.kind.{declared.name}"),
        _open_session=lambda: db.session(settings),
        _report=lambda report: _progress(settings, claimed, report),
        _state=lambda: _state(settings, claimed.id),
    )
    outcome = ""
    message = ""
    try:
        value = declared.body(ctx, payload)
        result = declared.dump_result(value)
        if _succeed(settings, ctx.session_opened, claimed, result):
            outcome = "succeeded"
            return result
        outcome, message = (
            "cancelled",
            "the job was cancelled or taken over while running; its work is rolled back",
        )
    except RetryLater as signal:
        _rollback(ctx)
        outcome = _finish_error(
            settings, claimed, signal, retryable=True, delay=signal.delay, declared=declared
        )
        message = signal.reason
    except Fail as signal:
        _rollback(ctx)
        outcome = _finish_error(settings, claimed, signal, retryable=False)
        message = str(signal)
    except SoftTimeLimitExceeded as error:
        _rollback(ctx)
        message = "time limit: the soft time limit was exceeded"
        outcome = _finish_error(settings, claimed, error, retryable=True, declared=declared, reason=message)
    except Exception as error:
        _rollback(ctx)
        retryable = isinstance(error, declared.retry_on)
        outcome = _finish_error(settings, claimed, error, retryable=retryable, declared=declared)
        message = f"{type(error).__name__}: {error}"
    finally:
        if ctx.session_opened is not None:
            ctx.session_opened.close()
        duration = round(time.monotonic() - started, 6)
        level = logging.INFO if outcome == "succeeded" else logging.WARNING
        _log(
            level,
            claimed,
            declared,
            "%s in %.3fs%s",
            outcome or "unrecorded",
            duration,
            f": {message}" if message else "",
            state=outcome or None,
            duration=duration,
        )
    raise AttemptFailed(outcome, message)


def _rollback(ctx: JobContext) -> None:
    if ctx.session_opened is not None:
        ctx.session_opened.rollback()


def _succeed(settings: Settings, session: Session | None, claimed: ledger.Claimed, result: Any) -> bool:
    """Record success: in the body's transaction if it used its session, else as one statement."""
    if session is None or not session.in_transaction():
        with db.direct(settings) as direct:
            return ledger.succeed(direct, claimed.id, claimed.attempt, result)
    if ledger.succeed(session.connection(), claimed.id, claimed.attempt, result):
        session.commit()
        return True
    session.rollback()
    return False


def _finish_error(
    settings: Settings,
    claimed: ledger.Claimed,
    error: BaseException,
    *,
    retryable: bool,
    declared: Kind | None = None,
    delay: float | None = None,
    reason: str | None = None,
) -> str:
    """Record a failed attempt: ``retrying`` if it may run again, else ``failed``."""
    record = error_record(error, reason=reason)
    return record_failure(
        settings,
        claimed.id,
        claimed.attempt,
        claimed.max_attempts,
        record,
        retryable=retryable,
        declared=declared,
        delay=delay,
    )


def record_failure(
    settings: Settings,
    job_id: uuid.UUID,
    attempt: int,
    max_attempts: int,
    record: dict[str, Any],
    *,
    retryable: bool,
    declared: Kind | None = None,
    delay: float | None = None,
) -> str:
    """Store a failed attempt's outcome; returns the state the job moved to ('' if it was not ours)."""
    with db.autocommit(settings) as conn:
        if retryable and attempt < max_attempts:
            wait = delay if delay is not None else (declared.backoff.delay(attempt) if declared else 0.0)
            return "retrying" if ledger.retry(conn, job_id, attempt, record, wait) else ""
        return "failed" if ledger.fail(conn, job_id, attempt, record) else ""


def _progress(settings: Settings, claimed: ledger.Claimed, report: dict[str, Any]) -> None:
    with db.autocommit(settings) as conn:
        ledger.progress(conn, claimed.id, claimed.attempt, report)


def _state(settings: Settings, job_id: uuid.UUID) -> str | None:
    with db.autocommit(settings) as conn:
        return conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()
