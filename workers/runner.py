"""One attempt of one job: claim, run the body, finish (docs/architecture.md, "Run path").

This module knows the ledger and the kinds, not Celery: ``workers.task`` wraps
it in a Celery task. Every outcome is one compare-and-set in the ledger; the
body's own database work commits in the same transaction as its success. What
a failed attempt leads to is decided by ``jobs.backoff.decide``; how it is
recorded, counted and logged is ``workers.outcomes``; a delivery the claim
found nothing for is ``workers.adoption``'s.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from jobs import counters, db, ledger
from jobs.backoff import Decision, decide
from jobs.context import JobContext
from jobs.errors import Fail, InvalidPayload, RetryLater
from jobs.kinds import Kind, Registry, lease_for
from jobs.settings import Settings
from workers.adoption import Delivery, unclaimed
from workers.outcomes import (
    AttemptFailed,
    NotRun,
    Recorded,
    error_record,
    log_failure,
    log_line,
    record_failure,
    record_success,
)

__all__ = ["AttemptFailed", "Defer", "Delivery", "NotRun", "Recorded", "run", "run_claimed"]

log = logging.getLogger("jobs.worker")

#: Records a plain success later, together with others (``workers.batching``): called with the
#: claim, the result and when the attempt started (``time.monotonic()``); the success is logged
#: and counted once it is recorded.
Defer = Callable[[ledger.Claimed, Any, float], None]


def run(settings: Settings, registry: Registry, delivery: Delivery) -> Any:
    """Run one delivered message through the ledger; returns the job's result.

    Raises ``NotRun`` when there was nothing to run (a duplicate delivery, a
    finished job), ``AttemptFailed`` when the attempt ran (or was refused) and
    did not succeed.
    """
    kind = registry.get(delivery.kind) if delivery.kind in registry else None
    with db.direct(settings) as direct:
        claimed = ledger.claim(
            direct, delivery.job_id, worker=delivery.worker, lease=lease_for(settings, kind)
        )
    if claimed is None:
        with db.autocommit(settings) as conn:
            claimed = unclaimed(conn, settings, registry, delivery)
    # Only kinds with a body are tasks of this worker (workers.task.register_kinds).
    assert kind is not None
    return run_claimed(settings, kind, claimed, delivery.worker)


def run_claimed(
    settings: Settings, kind: Kind, claimed: ledger.Claimed, worker: str, *, defer: Defer | None = None
) -> Any:
    """Run the attempt of a job just claimed; returns its result (see ``run``). With ``defer``, a
    plain success (a body that did not open ``ctx.session``, a job under no limit and in no
    workflow) is handed to it instead of being recorded here."""
    tally = counters.process_tally(settings)
    tally.observe(counters.QUEUE_WAIT, claimed.kind, claimed.queue, claimed.waited)
    if claimed.lost:
        tally.count(counters.ATTEMPTS, claimed.kind, claimed.queue, "lost")
    return _attempt(settings, kind, claimed, worker, defer)


def _attempt(
    settings: Settings, kind: Kind, claimed: ledger.Claimed, worker: str, defer: Defer | None = None
) -> Any:
    assert kind.body is not None
    started = time.monotonic()
    log_line(logging.DEBUG, claimed, kind, "running on %s", worker, state="running", worker=worker)
    try:
        payload = kind.validate(claimed.payload)
    except InvalidPayload as bad:
        # The ledger's payload no longer fits the kind's model: no attempt will make it fit.
        recorded = record_failure(
            settings, claimed.id, claimed.attempt, error_record(bad), Decision(retry=False)
        )
        log_failure(claimed, kind, recorded, 0.0, f"InvalidPayload: {bad.message}", worker=worker)
        raise AttemptFailed(recorded.state, "InvalidPayload", bad.message) from None

    ctx = _context(settings, kind, claimed)
    recorded = Recorded("")
    error_type = ""
    message = ""
    failure: BaseException | None = None
    try:
        value = kind.body(ctx, payload)
        result = kind.dump_result(value)
        if defer is not None and ctx.session_opened is None and not (claimed.limited or claimed.workflow):
            defer(claimed, result, started)
            return result
        if record_success(settings, ctx.session_opened, claimed, result):
            duration = round(time.monotonic() - started, 6)
            log_line(
                logging.INFO,
                claimed,
                kind,
                "succeeded in %.3fs",
                duration,
                state="succeeded",
                duration=duration,
                worker=worker,
            )
            return result
        now = _state_of(settings, claimed.id)
        if now == "cancelled":
            recorded = Recorded("cancelled")
        else:
            message = f"now {now or 'gone'}: taken over by another attempt"
    except Exception as error:  # SoftTimeLimitExceeded too
        _rollback(ctx)
        recorded, error_type, message, failure = _record_error(settings, kind, claimed, error)
    finally:
        if ctx.session_opened is not None:
            ctx.session_opened.close()
    duration = round(time.monotonic() - started, 6)
    shown = f"{error_type}: {message}" if error_type else message
    log_failure(claimed, kind, recorded, duration, shown, error=failure, worker=worker)
    raise AttemptFailed(recorded.state, error_type, message, recorded.not_before)


def _record_error(
    settings: Settings, kind: Kind, claimed: ledger.Claimed, error: Exception
) -> tuple[Recorded, str, str, BaseException | None]:
    """Record what the body raised; returns the outcome, the error's type and message as logged,
    and the exception whose traceback DEBUG shows (none for the bodies' signals)."""
    if isinstance(error, RetryLater):
        return _finish_error(settings, kind, claimed, error), "RetryLater", error.reason, None
    if isinstance(error, Fail):
        return _finish_error(settings, kind, claimed, error), "Fail", str(error), None
    if (limit := _soft_limit(error)) is not None:
        reason = "time limit: the soft time limit was exceeded"
        recorded = _finish_error(settings, kind, claimed, limit, reason=reason)
        return recorded, "SoftTimeLimitExceeded", "the soft time limit was exceeded", error
    return _finish_error(settings, kind, claimed, error), type(error).__name__, str(error), error


def _soft_limit(error: BaseException) -> SoftTimeLimitExceeded | None:
    """The soft time limit, raised in the body or inside a call it interrupted (a database driver
    then raises its own error, caused by this one: seen in CI with psycopg)."""
    seen: BaseException | None = error
    for _ in range(10):  # a chain of causes is short; a cycle of them must not hang the worker
        if seen is None or isinstance(seen, SoftTimeLimitExceeded):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _finish_error(
    settings: Settings,
    kind: Kind,
    claimed: ledger.Claimed,
    error: BaseException,
    *,
    reason: str | None = None,
) -> Recorded:
    """Record a failed attempt: ``retrying`` if it may run again, else ``failed``."""
    decision = decide(
        error,
        attempt=claimed.attempt,
        max_attempts=claimed.max_attempts,
        backoff=kind.backoff,
        retry_on=kind.retry_on,
        always=(SoftTimeLimitExceeded,),  # the body was stopped: another attempt may finish in time
    )
    return record_failure(settings, claimed.id, claimed.attempt, error_record(error, reason=reason), decision)


def _context(settings: Settings, kind: Kind, claimed: ledger.Claimed) -> JobContext:
    return JobContext(
        job_id=claimed.id,
        kind=kind.name,
        attempt=claimed.attempt,
        max_attempts=claimed.max_attempts,
        logger=logging.getLogger(f"jobs.kind.{kind.name}"),
        _open_session=lambda: db.session(settings),
        _report=lambda report: _progress(settings, claimed, report),
        _state=lambda: _state_of(settings, claimed.id),
    )


def _rollback(ctx: JobContext) -> None:
    if ctx.session_opened is not None:
        ctx.session_opened.rollback()


def _progress(settings: Settings, claimed: ledger.Claimed, report: dict[str, Any]) -> None:
    with db.autocommit(settings) as conn:
        ledger.progress(conn, claimed.id, claimed.attempt, report)


def _state_of(settings: Settings, job_id: uuid.UUID) -> str | None:
    with db.autocommit(settings) as conn:
        return ledger.state_of(conn, job_id)
