"""How an attempt's outcome is recorded and told: the ledger's transition, the counters, one log line.

Each attempt logs one line when it ends, with the job's fields as ``extra``:
INFO when it succeeded (or was cancelled), WARNING when it will be retried
(with the time of the next run), ERROR when the job failed for good. The
traceback is in the ledger (``jobs status``); the log has it only at DEBUG.
Each attempt is also counted for Prometheus (``jobs.counters``). Used by the
attempt itself (``workers.runner``, in the pool process) and by the worker's
main process for what the pool process cannot report (``workers.task``).
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jobs import counters, db, kinds, ledger, publisher
from jobs.backoff import Decision
from jobs.errors import ErrorRecord
from jobs.kinds import Kind
from jobs.settings import Settings

if TYPE_CHECKING:  # the ORM is imported when a body first opens ctx.session (jobs.db.session)
    from sqlalchemy.orm import Session

__all__ = [
    "AttemptFailed",
    "NotRun",
    "Recorded",
    "error_record",
    "log_failure",
    "log_line",
    "next_run",
    "publish_admitted",
    "record_failure",
    "record_success",
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


def error_record(error: BaseException, *, reason: str | None = None) -> ErrorRecord:
    """An exception as the ledger stores it: type, message, traceback."""
    trace = "".join(traceback.format_exception(error))
    return {
        "type": type(error).__name__,
        "message": reason or str(error) or type(error).__name__,
        "traceback": trace[-MAX_TRACEBACK:],
    }


def log_line(
    level: int,
    claimed: ledger.Claimed,
    kind: Kind,
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
        kind.name,
        claimed.attempt,
        claimed.max_attempts,
        claimed.queue,
        *args,
        exc_info=error if error is not None and log.isEnabledFor(logging.DEBUG) else None,
        extra={
            "job_id": str(claimed.id),
            "kind": kind.name,
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
    kind: Kind,
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
        log_line(
            logging.WARNING,
            claimed,
            kind,
            "failed after %.3fs; retrying now: %s",
            duration,
            message,
            error=error,
            state="retrying",
            **fields,
        )
    elif recorded.state == "retrying" and recorded.not_before is not None:
        at, wait = next_run(recorded.not_before)
        log_line(
            logging.WARNING,
            claimed,
            kind,
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
        log_line(
            logging.ERROR,
            claimed,
            kind,
            "failed after %.3fs (%s): %s",
            duration,
            why,
            message,
            error=error,
            state="failed",
            **fields,
        )
    elif recorded.state == "cancelled":
        log_line(
            logging.INFO,
            claimed,
            kind,
            "cancelled while running (after %.3fs); its work is rolled back",
            duration,
            state="cancelled",
            **fields,
        )
    else:
        log_line(
            logging.WARNING,
            claimed,
            kind,
            "ended after %.3fs, but the job is no longer this attempt's (%s); nothing recorded",
            duration,
            message,
            **fields,
        )


def record_success(settings: Settings, session: Session | None, claimed: ledger.Claimed, result: Any) -> bool:
    """Record success: in the body's transaction if it used its session, else as one statement
    (a job under a limit: with the admission of the next waiting jobs, in one transaction; a
    workflow's step: with the release of its children)."""
    admitted: list[ledger.Published] = []
    if session is not None and session.in_transaction():
        conn = session.connection()
        finished = ledger.succeed(conn, claimed.id, claimed.attempt, result)
        if finished and (claimed.limited or claimed.workflow):
            tally = counters.process_tally(settings)
            admitted = ledger.release(conn, [claimed.id], tally=tally, limited=claimed.limited)
        if finished:
            session.commit()
        else:
            session.rollback()
    elif claimed.workflow:  # a workflow's step: its children are counted and released in its commit
        with db.transaction(settings) as conn:
            finished = ledger.succeed(conn, claimed.id, claimed.attempt, result)
            if finished:
                tally = counters.process_tally(settings)
                admitted = ledger.release(conn, [claimed.id], tally=tally, limited=claimed.limited)
    elif claimed.limited:
        # The quick finish first, unless the kind's last finish here found jobs waiting behind it.
        contended = time.monotonic() - _CONTENDED.get(claimed.kind, float("-inf")) < CONTENDED_FOR
        if not contended:
            finished, contended = _succeed_freeing(settings, claimed, result)
        if contended:  # jobs wait behind its keys: finish, admitting them in the same commit
            with db.transaction(settings) as conn:
                finished = ledger.succeed(conn, claimed.id, claimed.attempt, result)
                if finished:
                    admitted = ledger.release(conn, [claimed.id])
            _CONTENDED[claimed.kind] = time.monotonic() if admitted else float("-inf")
    else:
        with db.direct(settings) as direct:
            finished = ledger.succeed(direct, claimed.id, claimed.attempt, result)
    publish_admitted(settings, admitted)
    if finished is None:
        return False
    counters.process_tally(settings).attempt_ended(
        finished.kind, finished.queue, "succeeded", state="succeeded", ran=finished.ran
    )
    return True


#: Seconds a kind's finishes in this process go straight to the admitting path after one of them
#: found jobs waiting (a saturated limit), instead of trying the quick finish first.
CONTENDED_FOR = 1.0
_CONTENDED: dict[str, float] = {}


def _succeed_freeing(
    settings: Settings, claimed: ledger.Claimed, result: Any
) -> tuple[ledger.Finished | None, bool]:
    """The finish of a job under a limit, on the hot path's connection, in one transaction with
    the drop of its slots; rolled back (``True``) when jobs wait behind its keys."""
    import psycopg

    finished: ledger.Finished | None = None
    contended = False
    with db.direct(settings) as direct, direct.transaction() as tx:
        finished = ledger.succeed(direct, claimed.id, claimed.attempt, result)
        contended = finished is not None and ledger.free_slots(direct, claimed.id)
        if contended:
            raise psycopg.Rollback(tx)  # leaves the block, rolled back
    return (None if contended else finished), contended


def publish_admitted(settings: Settings, admitted: list[ledger.Published]) -> None:
    """Send the jobs a finish admitted (after its commit; what fails waits for the relay)."""
    if admitted:
        publisher.publish_committed(settings, kinds.registry, admitted)


def record_failure(
    settings: Settings,
    job_id: uuid.UUID,
    attempt: int,
    record: ErrorRecord,
    decision: Decision,
) -> Recorded:
    """Store a failed attempt's outcome as decided (``jobs.backoff.decide``) and count it;
    returns the state the job moved to."""
    with db.transaction(settings) as conn:
        if decision.retry:
            finished = ledger.retry(conn, job_id, attempt, record, decision.delay)
            state, final = "retrying", None
        else:
            finished = ledger.fail(conn, job_id, attempt, record)
            state, final = "failed", "failed"
        # A job under a limit frees its slot: the next waiting job is admitted in this transaction;
        # a workflow step that failed for good cancels the children that needed it.
        admitted = (
            ledger.release(conn, [job_id], tally=counters.process_tally(settings))
            if finished is not None
            else []
        )
    publish_admitted(settings, admitted)
    if finished is None:
        return Recorded("")
    counters.process_tally(settings).attempt_ended(
        finished.kind, finished.queue, "error", state=final, ran=finished.ran
    )
    return Recorded(state, finished.not_before)
