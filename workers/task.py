"""The ledger-aware Celery task: one instance per job kind, named after the kind.

The body of every kind runs through ``workers.runner``; this module adds what
only Celery knows: the message's headers, the worker's hostname, and the two
failures the pool child cannot report itself (hard time limit, lost child),
which the worker's main process records in the ledger.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import sqlalchemy as sa
from celery import Celery, Task
from celery.exceptions import Reject, TimeLimitExceeded, WorkerLostError
from celery.worker.request import Request

from jobs import db
from jobs.errors import LedgerUnavailable
from jobs.kinds import Kind, Registry
from jobs.schema import jobs
from jobs.settings import Settings
from workers import runner, unknown

__all__ = ["LedgerRequest", "LedgerTask", "register_kinds"]

log = logging.getLogger("jobs.worker")

LEDGER_DOWN_PAUSE = 2.0


class LedgerRequest(Request):
    """A Celery request that tells the ledger when its pool child was lost."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)
        if isinstance(exc, WorkerLostError):
            task = self.task
            if isinstance(task, LedgerTask):
                task.release_lease(self.id, self.hostname, "its pool process was lost")
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        """Celery stops this job (cold shutdown): let its redelivery be claimed at once."""
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
    # Recorded in the ledger already; Celery marks the task failed and logs one line.
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

    def _refuse_id(self, delivery: runner.Delivery, task_id: str) -> None:
        """A message whose task id is not a UUID: recorded as failed under an id derived from it."""
        foreign = unknown.Foreign(
            delivery.job_id, delivery.kind, delivery.queue, delivery.priority, delivery.kwargs, task_id
        )
        outcome = unknown.refuse(self.settings, foreign, unknown.bad_id_error(task_id))
        unknown.log_outcome(foreign, outcome, delivery.worker)
        raise runner.AttemptFailed("failed", outcome.detail)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Called in the main process when the hard time limit killed the child."""
        if isinstance(exc, TimeLimitExceeded):
            self._record_hard_timeout(uuid.UUID(task_id), exc)

    def _record_hard_timeout(self, job_id: uuid.UUID, exc: TimeLimitExceeded) -> None:
        try:
            with db.transaction(self.settings) as conn:
                row = conn.execute(
                    sa.select(jobs.c.attempt, jobs.c.max_attempts).where(
                        jobs.c.id == job_id, jobs.c.state == "running"
                    )
                ).first()
            if row is None:
                return
            record = runner.error_record(exc, reason=f"time limit: killed after {exc.args[0]}s (hard limit)")
            state = runner.record_failure(
                self.settings,
                job_id,
                row.attempt,
                row.max_attempts,
                record,
                retryable=isinstance(exc, self.kind.retry_on),
                declared=self.kind,
            )
            log.warning("job %s %s hit its hard time limit; now %s", job_id, self.name, state or "unchanged")
        except LedgerUnavailable as error:
            log.error("job %s hit its hard time limit; not recorded (%s); the rescuer will", job_id, error)

    def release_lease(self, task_id: str, hostname: str | None, why: str) -> None:
        """The attempt ended without finishing: let the redelivered message claim the job at once."""
        try:
            with db.transaction(self.settings) as conn:
                released = conn.execute(
                    sa.update(jobs)
                    .where(
                        jobs.c.id == uuid.UUID(task_id),
                        jobs.c.state == "running",
                        jobs.c.worker == hostname,
                    )
                    .values(lease_until=sa.func.now())
                ).rowcount
            if released:  # nothing to say for a job that had finished already
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
                "__module__": __name__,
            },
        )
        app.register_task(task_class())
