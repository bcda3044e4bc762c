"""Paused queues, in the worker: stop consuming a queue while ``jobs queue pause`` holds it.

``PausedQueues`` is a step of the worker's consumer (``install`` adds it):

- **At start** (and after every reconnection to Redis), before the consumer
  takes its first message, it reads ``queue_pauses`` and cancels the consumer
  of every paused queue: a pause survives worker restarts.
- **While running**, a thread reads the table every ``JOBS_PAUSE_POLL``
  seconds, or at once when ``jobs queue pause/resume`` broadcasts the
  ``jobs_refresh_pauses`` control command, and the consumer's own loop stops
  or restarts consuming (``cancel_task_queue`` / ``add_task_queue``). Only the
  queues this worker was started with (``-Q``) are ever consumed again.

Messages and jobs are never dropped: a message Redis delivers for a queue
whose consumer was just cancelled is put back by kombu; jobs the worker had
already taken (running, or prefetched: at most one per pool process with
``worker_prefetch_multiplier=1``) finish; new messages wait in Redis until the
queue is resumed. If PostgreSQL is unreachable the worker keeps its current
pauses and logs a warning.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps
from celery.worker.control import control_command

from jobs import db, pauses
from jobs.settings import get_settings

__all__ = ["REFRESH_COMMAND", "PausedQueues", "install"]

log = logging.getLogger("jobs.worker.pauses")

REFRESH_COMMAND = "jobs_refresh_pauses"


class PausedQueues(bootsteps.StartStopStep):
    """Keeps the worker's consumers in line with the ledger's ``queue_pauses`` table."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "paused queues"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.settings = get_settings()
        self.configured: list[str] | None = None  # the queues this worker was started with
        self.paused: set[str] = set()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        c.paused_queues = self

    def start(self, c: Any) -> None:
        if self.configured is None:
            self.configured = sorted(queue.name for queue in c.task_consumer.queues)
        found = self._read()
        if found is not None:
            self.apply(c, found)  # in the consumer's thread, before its loop consumes anything
        if self.thread is None:
            self.thread = threading.Thread(target=self._poll, args=(c,), name="jobs-pauses", daemon=True)
            self.thread.start()

    def shutdown(self, c: Any) -> None:
        self.stopping.set()
        self.wake.set()

    def refresh(self) -> None:
        """Read the table now (the control command's handler)."""
        self.wake.set()

    def _read(self) -> set[str] | None:
        try:
            with db.transaction(self.settings) as conn:
                return set(pauses.paused(conn))
        except Exception as error:  # the ledger is down: keep the pauses we know
            log.warning("could not read paused queues (keeping the current ones): %s", error)
            return None

    def _poll(self, c: Any) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.settings.pause_poll)
            self.wake.clear()
            if self.stopping.is_set():
                return
            found = self._read()
            if found is not None and found != self.paused:
                c.call_soon(self.apply, c, found)

    def apply(self, c: Any, paused: set[str]) -> None:
        """Stop consuming the configured queues in ``paused``, consume the others again."""
        consumer = c.task_consumer
        if consumer is None or self.configured is None:  # reconnecting: start() applies them again
            return
        # The consumer's own list, not consuming_from(): before its loop starts nothing is consumed yet.
        held = {queue.name for queue in consumer.queues}
        for queue in self.configured:
            consuming = queue in held
            if queue in paused and consuming:
                c.cancel_task_queue(queue)
                log.info("queue %s is paused: not taking its jobs until it is resumed", queue)
            elif queue not in paused and not consuming:
                c.add_task_queue(queue)
                log.info("queue %s is resumed: taking its jobs again", queue)
        self.paused = paused


@control_command(name=REFRESH_COMMAND)
def refresh_pauses(state: Any, **_: Any) -> dict[str, str]:
    """Read the paused queues from the ledger now (sent by ``jobs queue pause/resume``)."""
    step = getattr(state.consumer, "paused_queues", None)
    if step is None:
        return {"ok": "no paused-queues step in this worker"}
    step.refresh()
    return {"ok": "refreshing paused queues"}


def install(app: Celery) -> None:
    """Add the step to the worker's consumer."""
    app.steps["consumer"].add(PausedQueues)
