"""The limits of bodies that run in the worker's own process (``jobs worker -P batched``).

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
  and ends the process at once; the supervisor (``jobs.batched_pool``) starts a
  new one, as the prefork pool replaces a child it killed;
- **cancellation**: a body that has run for a second is looked up in the ledger
  every second by the same thread; once an operator cancelled its job,
  ``JobCancelled`` (a ``BaseException``) is raised in it, as the prefork pool
  terminates the child running a cancelled job (Celery's revoke cannot reach a
  body that holds the consumer's own event loop);
- the **soft shutdown**: when the worker is asked to stop, the body running gets
  ``JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT`` seconds; then ``ShutdownExpired`` is
  raised in it (a ``BaseException``, which a body's ``except Exception`` does
  not swallow) and the job is handed back for another worker;
- the **memory limit**: past ``JOBS_WORKER_MAX_MEMORY_PER_CHILD`` the process stops
  after its batch (``recycle_past``) and its supervisor starts a new one, as the
  prefork pool replaces a child.
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

from jobs.batched_pool import EXIT_HARD_LIMIT

__all__ = ["EXIT_HARD_LIMIT", "Deadlines", "JobCancelled", "Running", "ShutdownExpired", "recycle_past"]

log = logging.getLogger("jobs.worker")

#: How often the watching thread looks, seconds (the hard limit's precision).
WATCH_EVERY = 0.25
#: A body that has run this long is looked up in the ledger this often, seconds (cancelled?).
CANCEL_CHECK = 1.0
#: A body that has run this long is a long one (``on_long``), seconds: in a ``jobs worker
#: --batches`` pool process, the jobs waiting behind it in its batch are handed back.
LONG_BODY = 0.5


class ShutdownExpired(BaseException):
    """The worker's soft shutdown window ended while this body ran: it is handed back."""


class JobCancelled(BaseException):
    """The job was cancelled in the ledger while its body ran: the body is stopped."""


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
    cancelled: bool = field(default=False)
    long: bool = field(default=False)
    next_check: float = field(default=0.0)


class Deadlines:
    """The clocks of the one body this process runs at a time.

    ``on_hard_limit`` is called from the watching thread with the body that reached its hard
    limit; when it returns (or raises) the process exits with ``EXIT_HARD_LIMIT``.
    """

    def __init__(
        self,
        on_hard_limit: Callable[[Running], None],
        is_cancelled: Callable[[Any], bool] = lambda job_id: False,
        on_long: Callable[[Running], None] | None = None,
    ) -> None:
        self.on_hard_limit = on_hard_limit
        self.is_cancelled = is_cancelled
        self.on_long = on_long
        self._main = threading.main_thread().ident
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
        current = Running(job_id, kind, now, now + soft, now + hard, hard, next_check=now + CANCEL_CHECK)
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
        if current.cancelled:
            raise JobCancelled()
        if self.shutdown_at is not None and now >= self.shutdown_at:
            raise ShutdownExpired()
        if not current.soft_fired and now >= current.soft_at:
            current.soft_fired = True
            self._arm(now)
            raise SoftTimeLimitExceeded()
        self._arm(now)

    def _check_cancelled(self, current: Running) -> None:
        try:
            cancelled = self.is_cancelled(current.job_id)
        except Exception:  # the ledger away: the body goes on, its finish will tell
            return
        if cancelled and self.current is current:
            current.cancelled = True
            if self._main is not None:
                signal.pthread_kill(self._main, signal.SIGALRM)

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_EVERY)
            current = self.current
            if current is None:
                continue
            now = time.monotonic()
            if self.on_long is not None and not current.long and now - current.started >= LONG_BODY:
                current.long = True
                try:
                    self.on_long(current)
                except Exception:
                    log.exception("job %s: acting on its long body failed", current.job_id)
            if now >= current.next_check and current.job_id is not None and not current.cancelled:
                current.next_check = now + CANCEL_CHECK
                self._check_cancelled(current)
            if now < current.hard_at:
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


def recycle_past(limit_kib: int) -> None:
    """Stop this worker process after its batch (a warm shutdown) if it holds more than
    ``limit_kib`` KiB; its supervisor starts a new one."""
    from celery.worker import state as worker_state

    used = _resident_kib()
    if used > limit_kib and worker_state.should_stop is None:
        log.warning(
            "this worker process holds %d KiB, past JOBS_WORKER_MAX_MEMORY_PER_CHILD (%d):"
            " it stops and its supervisor starts a new one",
            used,
            limit_kib,
        )
        setattr(worker_state, "should_stop", 0)  # noqa: B010 - typed None in celery-types


def _resident_kib() -> int:
    """This process's resident memory (Linux), else its peak (``getrusage``), KiB."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, IndexError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
