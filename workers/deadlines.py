"""Time limits for bodies that run in the worker's own process (``jobs worker -P batched``).

Celery enforces a job's time limits from outside the process that runs it: the
prefork pool's main process signals or kills the pool child. A batched worker
runs its bodies in the process that consumes (no pool child, no hand-off per
job), so it keeps its own clocks:

- the **soft limit** is a ``SIGALRM`` timer armed around each body: when it
  fires, ``SoftTimeLimitExceeded`` is raised in the body, exactly as in a
  prefork child, and the attempt is recorded as any error is;
- the **hard limit** is watched by a thread: a body still running at its hard
  limit cannot be stopped from inside (it may be stuck in C code), so the
  thread records the attempt as timed out, hands back what the process holds,
  and ends the process at once; the supervisor (``jobs.supervisor``) starts a
  new one, as the prefork pool replaces a child it killed;
- the **soft shutdown**: when the worker is asked to stop, the body running gets
  ``JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT`` seconds; then ``ShutdownExpired`` is
  raised in it (a ``BaseException``, which a body's ``except Exception`` does
  not swallow) and the job is handed back for another worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from jobs.supervisor import EXIT_HARD_LIMIT

__all__ = ["EXIT_HARD_LIMIT", "Deadlines", "Running", "ShutdownExpired"]

log = logging.getLogger("jobs.worker")

#: How often the watching thread looks, seconds (the hard limit's precision).
WATCH_EVERY = 0.25


class ShutdownExpired(BaseException):
    """The worker's soft shutdown window ended while this body ran: it is handed back."""


@dataclass(slots=True)
class Running:
    """The body running now, and its clocks (``time.monotonic()`` seconds)."""

    job_id: Any
    kind: Any
    started: float
    soft_at: float
    hard_at: float
    hard: float
    soft_fired: bool = field(default=False)


class Deadlines:
    """The clocks of the one body this process runs at a time.

    ``on_hard_limit`` is called from the watching thread with the body that reached its hard
    limit; when it returns (or raises) the process exits with ``EXIT_HARD_LIMIT``.
    """

    def __init__(self, on_hard_limit: Callable[[Running], None]) -> None:
        self.on_hard_limit = on_hard_limit
        self.current: Running | None = None
        self.shutdown_at: float | None = None
        self._killing = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        signal.signal(signal.SIGALRM, self._alarm)

    @contextlib.contextmanager
    def running(self, job_id: Any, kind: Any, soft: float, hard: float) -> Iterator[Running]:
        """Run a body under its soft and hard limits (and the soft shutdown's window, if open)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="jobs-hard-limit", daemon=True)
            self._thread.start()
        now = time.monotonic()
        current = Running(job_id, kind, now, now + soft, now + hard, hard)
        self.current = current
        self._arm(now)
        try:
            yield current
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            with self._lock:
                self.current = None
            if self._killing.is_set():  # the body returned as the hard limit was acted on: wait for the end
                while True:
                    time.sleep(60)

    def shutdown(self, timeout: float) -> None:
        """The worker was asked to stop: a running body gets ``timeout`` more seconds."""
        now = time.monotonic()
        self.shutdown_at = now + timeout
        if self.current is not None:
            self._arm(now)

    def _arm(self, now: float) -> None:
        current = self.current
        if current is None:
            return
        due = [self.shutdown_at] if self.shutdown_at is not None else []
        if not current.soft_fired:
            due.append(current.soft_at)
        if due:
            signal.setitimer(signal.ITIMER_REAL, max(min(due) - now, 0.001))

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        current = self.current
        if current is None:
            return
        now = time.monotonic()
        if self.shutdown_at is not None and now >= self.shutdown_at:
            raise ShutdownExpired()
        if not current.soft_fired and now >= current.soft_at:
            current.soft_fired = True
            self._arm(now)
            raise SoftTimeLimitExceeded()
        self._arm(now)

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_EVERY)
            current = self.current
            if current is None or time.monotonic() < current.hard_at:
                continue
            with self._lock:
                if self.current is not current:  # it returned meanwhile
                    continue
                self._killing.set()
            try:
                self.on_hard_limit(current)
            except BaseException:
                log.exception("job %s: acting on its hard time limit failed", current.job_id)
            finally:
                logging.shutdown()
                os._exit(EXIT_HARD_LIMIT)
