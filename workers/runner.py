"""One attempt of one job: claim, run the body, finish (docs/architecture.md, "Run path").

This module knows the ledger and the kinds, not Celery: ``workers.task`` wraps
it in a Celery task. Every outcome is one compare-and-set in the ledger; the
body's own database work commits in the same transaction as its success.

Each attempt logs one line when it ends, with the job's fields as ``extra``:
INFO when it succeeded (or was cancelled), WARNING when it will be retried
(with the time of the next run), ERROR when the job failed for good. The
traceback is in the ledger (``jobs status``); the log has it only at DEBUG.
Each attempt is also counted for Prometheus (``jobs.counters``).
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from jobs import counters, db, jsonsafe, ledger
from jobs.context import JobContext
from jobs.errors import Fail, InvalidPayload, RetryLater
from jobs.kinds import Kind, Registry, lease_for
from jobs.schema import jobs
from jobs.settings import Settings

__all__ = [
    "AttemptFailed",
    "Delivery",
    "NotRun",
    "Recorded",
    "error_record",
    "log_failure",
    "next_run",
    "record_failure",
    "run",
]

log = logging.getLogger("jobs.worker")

MAX_TRACEBACK = 8000


class AttemptFailed(Exception):
    """The attempt did not succeed, and the ledger already says so.

    ``state`` is what the ledger recorded: ``retrying`` (``not_before`` says
    when it runs again), ``failed``, ``cancelled``, or '' when the job was no
    longer this attempt's. ``error_type`` and ``message`` are the error as the
    ledger stores it. ``workers.task`` turns it into Celery's outcome (retry,
    failure, revoked). Its arguments are its fields, so it survives the trip
    from a pool process to the worker's main process (pickle); its ``repr`` is
    the error's, which Celery's events (and Flower) show.
    """

    def __init__(
        self, state: str, error_type: str = "", message: str = "", not_before: datetime | None = None
    ) -> None:
        super().__init__(state, error_type, message, not_before)
        self.state = state
        self.error_type = error_type
        self.message = message
        self.not_before = not_before

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}" if self.error_type else self.message or self.state

    def __repr__(self) -> str:
        return f"{self.error_type or 'AttemptFailed'}({self.message!r})"


class NotRun(Exception):
    """The delivery ran nothing: a duplicate or stale copy of a job that another attempt holds or
    that is finished (``state``: the job's state in the ledger)."""

    def __init__(self, state: str | None = None) -> None:
        super().__init__(state)
        self.state = state


@dataclass(frozen=True, slots=True)
class Recorded:
    """The state a failed attempt left the job in ('' if the job was no longer the attempt's),
    and when a ``retrying`` job runs again."""

    state: str
    not_before: datetime | None = None


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

    Raises ``NotRun`` when there was nothing to run (a duplicate delivery, a
    finished job), ``AttemptFailed`` when the attempt ran (or was refused) and
    did not succeed.
    """
    declared = registry.get(delivery.kind) if delivery.kind in registry else None
    with db.direct(settings) as direct:
        claimed = ledger.claim(
            direct, delivery.job_id, worker=delivery.worker, lease=lease_for(settings, declared)
        )
    if claimed is None:
        with db.autocommit(settings) as conn:
            claimed = _unclaimed(conn, settings, registry, delivery)
    tally = counters.process_tally(settings)
    tally.observe(counters.QUEUE_WAIT, claimed.kind, claimed.queue, claimed.waited)
    if claimed.lost:
        tally.count(counters.ATTEMPTS, claimed.kind, claimed.queue, "lost")
    # Only kinds with a body are tasks of this worker (workers.task.register_kinds).
    assert declared is not None
    assert declared.body is not None
    return _attempt(settings, declared, claimed, delivery.worker)


def _unclaimed(
    conn: sa.Connection, settings: Settings, registry: Registry, delivery: Delivery
) -> ledger.Claimed:
    """The claim found nothing: a duplicate, a stale redelivery, or a message from outside.

    Returns the job claimed after adopting a message from outside; raises ``NotRun`` or
    ``AttemptFailed`` otherwise.
    """
    row = conn.execute(
        sa.select(jobs.c.state, jobs.c.attempt, jobs.c.max_attempts, jobs.c.lease_until).where(
            jobs.c.id == delivery.job_id
        )
    ).first()
    if row is None:
        return _adopt(conn, settings, registry, delivery)
    if row.state == "running" and row.attempt >= row.max_attempts:
        rescued = ledger.rescue_expired(conn, only=delivery.job_id, tally=counters.process_tally(settings))
        if rescued:
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
        if not ledger.record_refused(conn, row, error):
            raise NotRun(ledger.state_of(conn, delivery.job_id)) from None
        counters.process_tally(settings).count(counters.FINISHED, row["kind"], row["queue"], "failed")
        log.error("job %s (%s) refused: %s", delivery.job_id, delivery.kind, refused.message)
        raise AttemptFailed("failed", "InvalidPayload", refused.message) from None
    if ledger.adopt(conn, row):
        log.info("job %s (%s) adopted into the ledger", delivery.job_id, delivery.kind)
    claimed = ledger.claim(conn, delivery.job_id, worker=delivery.worker, lease=lease_for(settings, declared))
    if claimed is None:
        raise NotRun(ledger.state_of(conn, delivery.job_id))
    return claimed


def _log(
    level: int,
    claimed: ledger.Claimed,
    declared: Kind,
    what: str,
    *args: Any,
    error: BaseException | None = None,
    **fields: Any,
) -> None:
    """One line per attempt outcome, with the job's fields as ``extra`` (kept as keys by the JSON
    format); with ``error``, its traceback when DEBUG is on (else only in the ledger)."""
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
        exc_info=error if error is not None and log.isEnabledFor(logging.DEBUG) else None,
        extra={
            "job_id": str(claimed.id),
            "kind": declared.name,
            "attempt": claimed.attempt,
            "max_attempts": claimed.max_attempts,
            "queue": claimed.queue,
            **fields,
        },
    )


def next_run(not_before: datetime) -> tuple[str, float]:
    """When a retrying job runs again, as an ISO time (UTC) and seconds from now."""
    at = not_before.astimezone(UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z"), max(
        (at - datetime.now(UTC)).total_seconds(), 0.0
    )


def log_failure(
    claimed: ledger.Claimed,
    declared: Kind,
    recorded: Recorded,
    duration: float,
    message: str,
    *,
    error: BaseException | None = None,
    worker: str | None = None,
) -> None:
    """The one line for an attempt that did not succeed: WARNING when it will be retried (with
    the next run time), ERROR when the job failed for good, INFO when it was cancelled."""
    fields: dict[str, Any] = {"duration": duration, "worker": worker}
    if recorded.state == "retrying" and recorded.not_before is None:  # its message is delivered again
        _log(
            logging.WARNING,
            claimed,
            declared,
            "failed after %.3fs; retrying now: %s",
            duration,
            message,
            error=error,
            state="retrying",
            **fields,
        )
    elif recorded.state == "retrying" and recorded.not_before is not None:
        at, wait = next_run(recorded.not_before)
        _log(
            logging.WARNING,
            claimed,
            declared,
            "failed after %.3fs; retrying at %s (in %.1fs): %s",
            duration,
            at,
            wait,
            message,
            error=error,
            state="retrying",
            next_run_at=at,
            **fields,
        )
    elif recorded.state == "failed":
        why = "no attempts left" if claimed.attempt >= claimed.max_attempts else "not retryable"
        _log(
            logging.ERROR,
            claimed,
            declared,
            "failed after %.3fs (%s): %s",
            duration,
            why,
            message,
            error=error,
            state="failed",
            **fields,
        )
    elif recorded.state == "cancelled":
        _log(
            logging.INFO,
            claimed,
            declared,
            "cancelled while running (after %.3fs); its work is rolled back",
            duration,
            state="cancelled",
            **fields,
        )
    else:
        _log(
            logging.WARNING,
            claimed,
            declared,
            "ended after %.3fs, but the job is no longer this attempt's (%s); nothing recorded",
            duration,
            message,
            **fields,
        )


def _attempt(settings: Settings, declared: Kind, claimed: ledger.Claimed, worker: str) -> Any:
    assert declared.body is not None
    started = time.monotonic()
    _log(logging.DEBUG, claimed, declared, "running on %s", worker, state="running", worker=worker)
    try:
        payload = declared.validate(claimed.payload)
    except InvalidPayload as bad:
        recorded = _finish_error(settings, claimed, bad, retryable=False)
        log_failure(claimed, declared, recorded, 0.0, f"InvalidPayload: {bad.message}", worker=worker)
        raise AttemptFailed(recorded.state, "InvalidPayload", bad.message) from None

    ctx = _context(settings, declared, claimed)
    recorded = Recorded("")
    error_type = ""
    message = ""
    failure: BaseException | None = None
    try:
        value = declared.body(ctx, payload)
        result = declared.dump_result(value)
        if _succeed(settings, ctx.session_opened, claimed, result):
            duration = round(time.monotonic() - started, 6)
            _log(
                logging.INFO,
                claimed,
                declared,
                "succeeded in %.3fs",
                duration,
                state="succeeded",
                duration=duration,
                worker=worker,
            )
            return result
        now = _state(settings, claimed.id)
        if now == "cancelled":
            recorded = Recorded("cancelled")
        else:
            message = f"now {now or 'gone'}: taken over by another attempt"
    except Exception as error:  # SoftTimeLimitExceeded too
        _rollback(ctx)
        recorded, error_type, message, failure = _record_error(settings, declared, claimed, error)
    finally:
        if ctx.session_opened is not None:
            ctx.session_opened.close()
    duration = round(time.monotonic() - started, 6)
    shown = f"{error_type}: {message}" if error_type else message
    log_failure(claimed, declared, recorded, duration, shown, error=failure, worker=worker)
    raise AttemptFailed(recorded.state, error_type, message, recorded.not_before)


def _record_error(
    settings: Settings, declared: Kind, claimed: ledger.Claimed, error: Exception
) -> tuple[Recorded, str, str, BaseException | None]:
    """Record what the body raised; returns the outcome, the error's type and message as logged,
    and the exception whose traceback DEBUG shows (none for the bodies' signals)."""
    if isinstance(error, RetryLater):
        recorded = _finish_error(
            settings, claimed, error, retryable=True, delay=error.delay, declared=declared
        )
        return recorded, "RetryLater", error.reason, None
    if isinstance(error, Fail):
        return _finish_error(settings, claimed, error, retryable=False), "Fail", str(error), None
    if isinstance(error, SoftTimeLimitExceeded):
        reason = "time limit: the soft time limit was exceeded"
        recorded = _finish_error(settings, claimed, error, retryable=True, declared=declared, reason=reason)
        return recorded, "SoftTimeLimitExceeded", "the soft time limit was exceeded", error
    retryable = isinstance(error, declared.retry_on)
    recorded = _finish_error(settings, claimed, error, retryable=retryable, declared=declared)
    return recorded, type(error).__name__, str(error), error


def _context(settings: Settings, declared: Kind, claimed: ledger.Claimed) -> JobContext:
    return JobContext(
        job_id=claimed.id,
        kind=declared.name,
        attempt=claimed.attempt,
        max_attempts=claimed.max_attempts,
        logger=logging.getLogger(f"jobs.kind.{declared.name}"),
        _open_session=lambda: db.session(settings),
        _report=lambda report: _progress(settings, claimed, report),
        _state=lambda: _state(settings, claimed.id),
    )


def _rollback(ctx: JobContext) -> None:
    if ctx.session_opened is not None:
        ctx.session_opened.rollback()


def _succeed(settings: Settings, session: Session | None, claimed: ledger.Claimed, result: Any) -> bool:
    """Record success: in the body's transaction if it used its session, else as one statement."""
    if session is None or not session.in_transaction():
        with db.direct(settings) as direct:
            finished = ledger.succeed(direct, claimed.id, claimed.attempt, result)
    else:
        finished = ledger.succeed(session.connection(), claimed.id, claimed.attempt, result)
        if finished:
            session.commit()
        else:
            session.rollback()
    if finished is None:
        return False
    counters.process_tally(settings).attempt_ended(
        finished.kind, finished.queue, "succeeded", state="succeeded", ran=finished.ran
    )
    return True


def _finish_error(
    settings: Settings,
    claimed: ledger.Claimed,
    error: BaseException,
    *,
    retryable: bool,
    declared: Kind | None = None,
    delay: float | None = None,
    reason: str | None = None,
) -> Recorded:
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
) -> Recorded:
    """Store a failed attempt's outcome (and count it); returns the state the job moved to."""
    with db.autocommit(settings) as conn:
        if retryable and attempt < max_attempts:
            wait = delay if delay is not None else (declared.backoff.delay(attempt) if declared else 0.0)
            finished = ledger.retry(conn, job_id, attempt, record, wait)
            state, final = "retrying", None
        else:
            finished = ledger.fail(conn, job_id, attempt, record)
            state, final = "failed", "failed"
    if finished is None:
        return Recorded("")
    counters.process_tally(settings).attempt_ended(
        finished.kind, finished.queue, "error", state=final, ran=finished.ran
    )
    return Recorded(state, finished.not_before)


def _progress(settings: Settings, claimed: ledger.Claimed, report: dict[str, Any]) -> None:
    with db.autocommit(settings) as conn:
        ledger.progress(conn, claimed.id, claimed.attempt, report)


def _state(settings: Settings, job_id: uuid.UUID) -> str | None:
    with db.autocommit(settings) as conn:
        return conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()
