"""The stall watchdog, in the worker: a consumer that stopped taking messages gets a new connection.

Celery's Redis transport has a long history of one failure that loses no
message but stops a worker for good: after its broker connection drops twice
within a few seconds (Redis restarted, a failover), the worker reconnects,
answers pings, and never takes another message (celery/celery#8030, #8091,
kombu#2629; the fault suite's scenario 19 reproduces it with kombu 5.7). The
jobs wait in Redis until someone restarts the worker.

``StallWatchdog`` is a step of the worker's consumer (``install`` adds it). A
thread looks every third of ``JOBS_WORKER_STALL_TIMEOUT`` seconds, and the
stall clock runs only while all of these hold:

- the worker received no message since the last look (the ``task_received``,
  ``task_rejected`` and ``task_unknown`` signals count them);
- it has room: fewer unfinished jobs than its prefetch limit (a worker whose
  processes are all busy rightly takes nothing);
- messages wait in Redis in the queues its consumer holds (a paused queue's
  consumer is cancelled, so its backlog does not count).

When the clock reaches ``JOBS_WORKER_STALL_TIMEOUT`` the watchdog logs an error
and has the consumer's own event loop raise a connection error: Celery then
does what it does after any connection loss (reconnect, consume again; the
running jobs go on, and their messages come back to be absorbed by the claim).
If the loop does not run even that within another timeout, it is wedged: the
watchdog sends the worker SIGTERM (the soft shutdown) so that its supervisor
starts a fresh one; a wedged worker can hang in its shutdown too (seen in the
fault suite: a prefork worker's cold shutdown after a Redis restart), so if it
is still there ``KILL_AFTER`` seconds past its soft shutdown's window, the
watchdog SIGKILLs it. Nothing is lost either way: the ledger still holds every
job as queued or running, and the leases of running ones end.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps, signals
from celery.worker import state as worker_state

from jobs import broker
from jobs.settings import get_settings

if TYPE_CHECKING:
    import redis

__all__ = ["StallWatchdog", "install", "stopping"]

log = logging.getLogger("jobs.worker.watchdog")

#: Seconds past ``JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT`` a worker the watchdog stopped may take to
#: exit before the watchdog kills it (the same margin docs/deploy.md asks of a container's stop).
KILL_AFTER = 15.0


def stopping() -> bool:
    """Whether this worker process began a shutdown (warm or cold): it takes no more messages."""
    return worker_state.should_terminate is not None or worker_state.should_stop is not None


class Receipts:
    """Messages this worker's consumer received (incremented by the signals, read by the watchdog)."""

    count = 0

    @classmethod
    def add(cls, **_: Any) -> None:
        cls.count += 1


class StallWatchdog(bootsteps.StartStopStep):
    """Reconnects a consumer that takes no message while messages wait for it and it has room."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "stall watchdog"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.settings = get_settings()
        self.timeout = self.settings.worker_stall_timeout
        self.seen = Receipts.count
        self.since = time.monotonic()  # when the stall clock last started
        self.asked: float | None = None  # when the consumer was asked to reconnect
        self.killer: threading.Timer | None = None  # armed once the watchdog stopped the worker
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        c.stall_watchdog = self

    def start(self, c: Any) -> None:
        self.since, self.asked = time.monotonic(), None  # a (re)connected consumer starts afresh
        if self.timeout and self.thread is None:
            self.thread = threading.Thread(target=self._watch, args=(c,), name="jobs-watchdog", daemon=True)
            self.thread.start()

    def shutdown(self, c: Any) -> None:
        self.stopping.set()

    def _watch(self, c: Any) -> None:
        while not self.stopping.wait(self.timeout / 3):
            try:
                self.check(c, time.monotonic())
            except Exception:  # the watchdog must never take the worker down by itself
                log.exception("stall watchdog: the check failed; trying again")

    def check(self, c: Any, now: float) -> None:
        """One look: restart the stall clock, or act on a stall that lasted ``timeout``."""
        if self.asked is not None:
            if now - self.asked >= self.timeout:
                log.critical(
                    "stall watchdog: the consumer did not reconnect within %gs; stopping this worker"
                    " (SIGTERM) so that its supervisor starts a new one",
                    self.timeout,
                )
                self.stopping.set()
                os.kill(os.getpid(), signal.SIGTERM)
                grace = self.settings.worker_soft_shutdown_timeout + KILL_AFTER
                self.killer = threading.Timer(grace, self._kill, args=(grace,))
                self.killer.daemon = True
                self.killer.start()
            return
        received, self.seen = self.seen != Receipts.count, Receipts.count
        # A worker that is stopping takes nothing on purpose (its running job has the soft
        # shutdown's window): not a stall.
        waiting = 0 if received or stopping() else self._waiting(c)
        if not waiting:
            self.since = now
            return
        if now - self.since < self.timeout:
            return
        log.error(
            "stall watchdog: %d message(s) wait in this worker's queues and it has room for more,"
            " but it took none for %.0fs; reconnecting to the broker",
            waiting,
            now - self.since,
        )
        self.asked = now
        c.call_soon(self._reconnect)

    def _waiting(self, c: Any) -> int:
        """Messages waiting in the queues the consumer holds, or 0 when the worker has no room."""
        consumer, qos = c.task_consumer, c.qos
        if consumer is None or qos is None:  # between connections: Celery is already reconnecting
            return 0
        if qos.value and len(worker_state.reserved_requests) >= qos.value:
            return 0
        queues = [queue.name for queue in consumer.queues]
        if not queues:
            return 0
        from redis.exceptions import RedisError

        try:
            return sum(broker.ready_messages(self._redis(), queues).values())
        except (RedisError, OSError):  # Redis is away: Celery's own reconnection handles that
            return 0

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = broker.client(self.settings)
        return self._client

    def _kill(self, grace: float) -> None:
        """The worker the watchdog stopped is still here: its shutdown hangs too."""
        log.critical("stall watchdog: this worker did not stop within %gs of its SIGTERM; SIGKILL", grace)
        os.kill(os.getpid(), signal.SIGKILL)

    def _reconnect(self) -> None:
        """Run by the consumer's event loop: fail the way a lost connection fails."""
        from redis.exceptions import ConnectionError as RedisConnectionError

        raise RedisConnectionError("stall watchdog: reconnecting a consumer that stopped taking messages")


def install(app: Celery) -> None:
    """Add the step to the worker's consumer (unless ``JOBS_WORKER_STALL_TIMEOUT`` is 0)."""
    if not get_settings().worker_stall_timeout:
        return
    for signal_ in (signals.task_received, signals.task_rejected, signals.task_unknown):
        signal_.connect(Receipts.add, weak=False)
    app.steps["consumer"].add(StallWatchdog)
