"""The worker's consumer: Celery's, except that every message it cannot run leaves a ledger row.

- A message of a kind this worker does not implement: Celery's consumer
  rejects it and reports the task as failed; this one hands it to
  ``workers.unknown``, which hands the job back, adopts it to wait for a
  worker that has the kind, or records it as failed, and only then
  acknowledges the message.
- A message whose body cannot be decoded (not JSON) or whose content type is
  refused (a pickle): Celery logs and acknowledges it; this one first records
  it as ``failed`` with the reason, under its job id (when it carries one).

If PostgreSQL cannot be reached the message goes back to the broker after
``LEDGER_DOWN_PAUSE`` seconds instead, so nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer as CeleryConsumer

from jobs.errors import ErrorRecord, LedgerUnavailable
from jobs.settings import get_settings
from workers import unknown

__all__ = ["ALSO_CANCEL", "LEDGER_DOWN_PAUSE", "Consumer"]

log = logging.getLogger("jobs.worker")

LEDGER_DOWN_PAUSE = 2.0


#: Called when Celery cancels the active requests (the cold shutdown), after its own: the
#: bodies that run outside Celery's requests (``jobs worker --batches``) are handed back too.
ALSO_CANCEL: list[Callable[[], None]] = []


class Consumer(CeleryConsumer):
    """Celery's consumer with ``on_unknown_task`` routed through the ledger."""

    def cancel_active_requests(self) -> None:
        super().cancel_active_requests()
        for cancel in ALSO_CANCEL:
            try:
                cancel()
            except Exception:  # the shutdown goes on; the leases end
                log.exception("handing back the running batches failed")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        settings = get_settings()
        try:
            decoded = message.decode()
        except Exception:  # a body that does not decode: its payload stays empty
            decoded = None
        foreign = unknown.parse(
            message.headers, message.delivery_info, message.properties, decoded, settings.default_queue
        )
        if foreign is None:  # no usable id: nothing the ledger can record it under
            super().on_unknown_task(body, message, exc)
            return
        worker = str(self.hostname)
        try:
            outcome = unknown.handle(settings, foreign)
        except LedgerUnavailable as error:
            unknown.unavailable(foreign, error)
            self.timer.call_after(LEDGER_DOWN_PAUSE, self._requeue, (message,))
            return
        except Exception:  # never into the consumer's loop; the message comes back later
            log.exception("job %s (%s) not handed back; the message returns", foreign.job_id, foreign.kind)
            self.timer.call_after(LEDGER_DOWN_PAUSE, self._requeue, (message,))
            return
        unknown.log_outcome(foreign, outcome, worker)
        # celery-types does not declare these attributes of the consumer.
        events: Any = getattr(self, "event_dispatcher", None)
        errors: Any = getattr(self, "connection_errors", ())
        if outcome.what == "failed" and events:
            headers = message.headers if isinstance(message.headers, dict) else {}
            events.send(
                "task-received",
                uuid=str(foreign.job_id),
                name=foreign.kind,
                args=headers.get("argsrepr") or "()",
                kwargs=headers.get("kwargsrepr") or "{}",
                root_id=headers.get("root_id"),
                parent_id=headers.get("parent_id"),
                retries=0,
            )
            events.send("task-failed", uuid=str(foreign.job_id), exception=f"UnknownKind({outcome.detail!r})")
        message.ack_log_error(log, errors)
        signals.task_unknown.send(
            sender=self, message=message, exc=exc, name=foreign.kind, id=str(foreign.job_id)
        )

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if self._refused(message, f"the message body cannot be decoded: {_first_line(exc)}"):
            super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if self._refused(message, f"the message was refused: {_first_line(exc)}"):
            super().on_invalid_task(body, message, exc)

    def _refused(self, message: Any, reason: str) -> bool:
        """Record a message that cannot run as a failed job; ``False`` if it was requeued instead."""
        settings = get_settings()
        foreign = unknown.parse(
            message.headers, message.delivery_info, message.properties, None, settings.default_queue
        )
        if foreign is None:  # no job id: Celery's own log line is all there is
            return True
        try:
            refused: ErrorRecord = {"type": "InvalidMessage", "message": reason}
            outcome = unknown.refuse(settings, foreign, refused, count_as=unknown.UNKNOWN_KIND_LABEL)
        except LedgerUnavailable as error:
            unknown.unavailable(foreign, error)
            self.timer.call_after(LEDGER_DOWN_PAUSE, self._requeue, (message,))
            return False
        unknown.log_outcome(foreign, outcome, str(self.hostname))
        return True

    def _requeue(self, message: Any) -> None:
        errors: Any = getattr(self, "connection_errors", ())
        message.reject_log_error(log, errors, requeue=True)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
