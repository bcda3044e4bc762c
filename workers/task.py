"""The ledger-aware Celery task: one instance per job kind, named after the kind.

The body of every kind runs through ``workers.runner``; this module adds what
only Celery knows: the message's headers, the worker's hostname, and the two
failures the pool child cannot report itself (hard time limit, lost child),
which the worker's main process records in the ledger.

It also maps each attempt's outcome to Celery's own task events, so that
Flower agrees with the ledger:

- succeeded: ``task-succeeded`` (SUCCESS);
- will be retried (an error with attempts left, a hard time limit, a lost pool
  process): ``task-retried`` (RETRY). The message is acknowledged: the retry
  waits in the ledger and the leader's stager publishes it when due (a lost
  pool process's message goes back to the broker at once, as before);
- failed for good: ``task-failed`` (FAILURE);
- cancelled: ``task-revoked`` (REVOKED);
- nothing run (a duplicate or stale copy): no outcome event (``Ignore``), so
  Flower keeps what the attempt that holds the job said.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]  # missing from the stubs
from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded, WorkerLostError
from celery.utils.serialization import get_pickled_exception
from celery.worker import state as worker_state
from celery.worker.request import Request

from jobs import counters, db, ledger
from jobs.backoff import decide
from jobs.errors import LedgerUnavailable
from jobs.kinds import Kind, Registry
from jobs.settings import Settings
from workers import outcomes, runner, unknown

if TYPE_CHECKING:
    from celery.worker.request import _InfoDict  # the stubs' type of Request.info()

__all__ = ["LedgerRequest", "LedgerTask", "Revoked", "register_kinds"]

log = logging.getLogger("jobs.worker")
celery_log = logging.getLogger("celery.worker.request")

LEDGER_DOWN_PAUSE = 2.0


class Revoked(Ignore):
    """The job is cancelled in the ledger: the worker sends ``task-revoked`` and acknowledges."""


def _exception(exc_info: Any) -> Any:
    exc = getattr(exc_info, "exception", None)
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    return get_pickled_exception(exc) if exc is not None else None


class LedgerRequest(Request):
    """A Celery request whose outcomes in the worker's main process follow the ledger."""

    _ledger_handled = False

    def info(self, safe: bool = False) -> _InfoDict:
        """What remote control lists of this request (``inspect active``, ``reserved``,
        ``scheduled``, ``query_task``; Flower's worker page): the masked payload
        (``kwargsrepr``) always, never the message's own arguments, which carry its secrets."""
        return super().info(safe=True)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = _exception(exc_info)
        task = self.task
        if isinstance(task, LedgerTask) and not worker_state.should_terminate:
            if isinstance(exc, TimeLimitExceeded):
                self._hard_time_limit(task, exc)
                return
            request: Any = self  # celery-types does not declare the request's private state
            lost = isinstance(exc, WorkerLostError) or (
                isinstance(exc, SystemExit | KeyboardInterrupt)
                and not (request._already_cancelled or request._already_revoked)
            )
            if lost and self._lost_child(task, exc):
                return
        if isinstance(exc, Revoked) and not getattr(self, "_already_revoked", False):
            # (Celery sent task-revoked already if the cancel's revoke terminated the child first.)
            self.send_event("task-revoked", terminated=False, signum=None, expired=False)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if worker_state.should_terminate or not isinstance(self.task, LedgerTask):
            super().on_timeout(soft, timeout)
        elif not soft and not self._ledger_handled:
            # billiard reports a hard time limit to on_failure first (TimeLimitExceeded), then here.
            self._hard_time_limit(self.task, TimeLimitExceeded(timeout))
        # A soft limit: the attempt's own line says it (SoftTimeLimitExceeded, or the hard limit).

    def _ran(self) -> float:
        return round(max(time.time() - self.time_start, 0.0), 6) if self.time_start else 0.0

    def _hard_time_limit(self, task: LedgerTask, exc: TimeLimitExceeded) -> None:
        """The pool child was killed at the hard time limit: record the attempt, then ack."""
        if self._ledger_handled:
            return
        self._ledger_handled = True
        worker_state.task_ready(self)
        try:
            outcome = task.record_hard_timeout(self.id, exc, self._ran())
        except LedgerUnavailable as error:
            log.error("job %s hit its hard time limit; not recorded (%s); the rescuer will", self.id, error)
            outcome = None
        self._announce(outcome, repr(exc))
        self.acknowledge()  # acks_on_failure_or_timeout: the ledger decides whether it runs again

    def _lost_child(self, task: LedgerTask, exc: BaseException) -> bool:
        """The pool child died: record it, and requeue (attempts left) or ack (none left).
        ``False`` when the ledger cannot be reached (Celery's own handling requeues it)."""
        self._ledger_handled = True
        why = str(exc) if isinstance(exc, WorkerLostError) else f"{type(exc).__name__}"
        try:
            outcome = task.lost_child(self.id, self.hostname, why, self._ran())
        except LedgerUnavailable as error:
            log.error("job %s: its pool process was lost; not recorded (%s)", self.id, error)
            return False
        worker_state.task_ready(self)
        self._announce(outcome, f"WorkerLostError({why!r})")
        if outcome is not None and outcome.state == "failed":
            self.acknowledge()
        else:
            # The message goes back to the broker: the next delivery claims the job at once (or,
            # had the child died before its claim, runs it). Quietly: Celery's reject() would add
            # a task-rejected event to what is one retry.
            request: Any = self  # celery-types does not declare the request's private state
            request._on_reject(celery_log, request._connection_errors, True)
            self.acknowledged = True
        return True

    def _announce(self, outcome: outcomes.Recorded | None, exception: str) -> None:
        """The task event for what the ledger recorded."""
        state = outcome.state if outcome is not None else ""
        if state == "retrying":
            self.send_event("task-retried", exception=exception, traceback="")
        elif state == "failed":
            self.send_event("task-failed", exception=exception, traceback="")
        elif state == "cancelled":
            self.send_event("task-revoked", terminated=True, signum=None, expired=False)

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        """Celery stops this job (cold shutdown): let its redelivery be claimed at once."""
        if isinstance(self.task, LedgerTask) and self.task.settings.worker_batched:
            return  # it runs in this very process: workers.deadlines stops it when the window ends
        if self.time_start and isinstance(self.task, LedgerTask):
            self.task.release_lease(
                self.id,
                self.hostname,
                "the worker's cold shutdown stopped it (soft shutdown expired, or SIGQUIT)",
            )
        super().cancel(pool, signal=signal, emit_retry=emit_retry)


class LedgerTask(Task[Any, Any]):
    """Runs one kind's jobs; ``settings`` and ``registry`` are set at registration."""

    Request = "workers.task:LedgerRequest"
    typing = False
    ignore_result = True
    acks_late = True
    reject_on_worker_lost = True
    # A final failure, recorded in the ledger already: Celery marks the task failed, no traceback.
    throws = (runner.AttemptFailed,)
    kind: Kind
    settings: Settings
    registry: Registry

    def run(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        delivery_info = request.delivery_info or {}
        job_id, bad_id = unknown.job_id_of(str(request.id))
        delivery = runner.Delivery(
            job_id=job_id,
            kind=self.name,
            kwargs=dict(kwargs),
            queue=str(delivery_info.get("routing_key") or self.settings.default_queue),
            priority=int(delivery_info.get("priority") or self.kind.priority),
            worker=str(request.hostname or "unknown"),
        )
        try:
            if bad_id is not None:
                return self._refuse_id(delivery, bad_id)
            return runner.run(self.settings, self.registry, delivery)
        except LedgerUnavailable as error:
            # Never run a body we cannot record: hand the message back and let it return later.
            log.error("job %s not run: %s; message handed back", request.id, error)
            time.sleep(LEDGER_DOWN_PAUSE)
            raise Reject(str(error), requeue=True) from error
        except runner.NotRun as skipped:
            if skipped.state == "cancelled":
                raise Revoked("cancelled") from None
            raise Ignore() from None
        except runner.AttemptFailed as failed:
            if failed.state == "retrying":
                # Celery's RETRY, without Task.retry(): no new message; the retry waits in the
                # ledger and the leader publishes it at not_before.
                raise Retry(str(failed), exc=failed, when=failed.not_before) from None
            if failed.state == "cancelled":
                raise Revoked("cancelled") from None
            if failed.state == "failed":
                raise
            raise Ignore() from None  # not recorded: another attempt holds the job

    def _refuse_id(self, delivery: runner.Delivery, task_id: str) -> None:
        """A message whose task id is not a UUID: recorded as failed under an id derived from it."""
        foreign = unknown.Foreign(
            delivery.job_id, delivery.kind, delivery.queue, delivery.priority, delivery.kwargs, task_id
        )
        outcome = unknown.refuse(self.settings, foreign, unknown.bad_id_error(task_id))
        unknown.log_outcome(foreign, outcome, delivery.worker)
        if outcome.what != "failed":
            raise runner.NotRun()
        raise runner.AttemptFailed("failed", "InvalidJobOptions", outcome.detail)

    def _claimed(self, job_id: uuid.UUID, running: ledger.Status) -> ledger.Claimed:
        return ledger.Claimed(job_id, self.name, {}, running.attempt, running.max_attempts, running.queue)

    def record_hard_timeout(
        self, task_id: str, exc: TimeLimitExceeded, ran: float
    ) -> outcomes.Recorded | None:
        """Record an attempt the hard time limit killed; ``None`` if the job was not running."""
        job_id = uuid.UUID(task_id)
        with db.transaction(self.settings) as conn:
            running = ledger.status_of(conn, job_id)
        if running is None or running.state != "running":
            return None
        reason = f"time limit: killed after {exc.args[0]}s (hard limit)"
        decision = decide(
            exc,
            attempt=running.attempt,
            max_attempts=running.max_attempts,
            backoff=self.kind.backoff,
            retry_on=self.kind.retry_on,
        )
        record = outcomes.error_record(exc, reason=reason)
        recorded = outcomes.record_failure(self.settings, job_id, running.attempt, record, decision)
        outcomes.log_failure(
            self._claimed(job_id, running), self.kind, recorded, ran, f"TimeLimitExceeded: {reason}"
        )
        return recorded

    def lost_child(
        self, task_id: str, hostname: str | None, why: str, ran: float
    ) -> outcomes.Recorded | None:
        """The pool process running this job died: release its lease so that the redelivered
        message claims it at once (``retrying``), or fail it on its last attempt (``failed``).
        ``None`` when the job was not running here (finished already, or never claimed)."""
        job_id = uuid.UUID(task_id)
        with db.transaction(self.settings) as conn:
            running = ledger.release_lease(conn, job_id, hostname)
        if running is None:
            return None
        claimed = self._claimed(job_id, running)
        recorded = outcomes.Recorded("retrying")
        if running.attempt >= running.max_attempts:
            with db.transaction(self.settings) as conn:
                rescued = ledger.rescue_expired(
                    conn, only=job_id, tally=counters.process_tally(self.settings)
                )
                admitted = ledger.release(  # under a limit: the next job's turn; a step's children
                    conn, [job_id], tally=counters.process_tally(self.settings)
                )
            outcomes.publish_admitted(self.settings, admitted)
            if rescued:
                recorded = outcomes.Recorded(rescued[0][1])
        message = f"WorkerLostError: its pool process was lost ({why})"
        outcomes.log_failure(claimed, self.kind, recorded, ran, message)
        return recorded

    def release_lease(self, task_id: str, hostname: str | None, why: str) -> None:
        """The attempt ended without finishing: let the redelivered message claim the job at once."""
        try:
            with db.transaction(self.settings) as conn:
                released = ledger.release_lease(conn, uuid.UUID(task_id), hostname)
            if released is not None:  # nothing to say for a job that had finished already
                log.warning("job %s %s: %s; lease released", task_id, self.name, why)
        except LedgerUnavailable as error:
            log.error("job %s: %s; lease not released (%s)", task_id, why, error)


def register_kinds(app: Celery, registry: Registry, settings: Settings) -> None:
    """Register one ledger-aware task per kind this worker implements, with the kind's own limits.

    A kind declared without a body here (its body lives in another team's workers) is not a task
    of this worker: its messages are handed back (``workers.unknown``).
    """
    for kind in registry:
        if kind.body is None:
            continue
        task_class = type(
            f"Job_{kind.name.replace('.', '_')}",
            (LedgerTask,),
            {
                "name": kind.name,
                "kind": kind,
                "settings": settings,
                "registry": registry,
                "soft_time_limit": kind.soft_time_limit or settings.soft_time_limit,
                "time_limit": kind.hard_time_limit or settings.hard_time_limit,
                # jobs worker -P batched and --batches: its messages join batches (workers.batching).
                **({"Strategy": "workers.batching:strategy"} if _batches(settings) else {}),
                "__module__": __name__,
            },
        )
        app.register_task(task_class())


def _batches(settings: Settings) -> bool:
    return settings.worker_batched or settings.worker_pool_batches
