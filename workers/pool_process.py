"""What runs in a pool process of ``jobs worker --batches`` (``workers.pool_batches``): one batch
per job the main process sends, run by ``workers.batch_run``, and reported back.

The pool process touches no message: its report says, per message, acknowledge (its outcome
committed), requeue, run it on the single-job path, or withdrawn (handed back behind a long
body: its record said so, and the main process requeued it); with the task events to send.
It keeps the record of ``jobs.unstarted`` in a file named after its pid, which the main
process reads to list its running body, to find what it withdrew, and when it is lost.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from types import FrameType
from typing import Any

from celery import current_app
from celery.worker import state as worker_state

from jobs import counters, db, ledger, unstarted
from jobs.errors import LedgerUnavailable
from jobs.settings import Settings, get_settings
from workers.batch_run import BatchRun
from workers.deadlines import Running
from workers.recording import Received, Recorder

__all__ = ["ACK", "RECORDS", "REQUEUE", "SHUTDOWN", "SINGLE", "WITHDRAWN", "Report", "init", "run_batch"]

log = logging.getLogger("jobs.worker")

#: The environment variable naming the directory of the pool processes' records.
RECORDS = "JOBS_POOL_BATCH_RECORDS"
#: What the main process sends the pool processes that run batches when the worker stops.
SHUTDOWN = signal.SIGUSR2

ACK, REQUEUE, SINGLE, WITHDRAWN = "ack", "requeue", "single", "withdrawn"

#: A pool process's report of one batch: per message ``ACK``, ``REQUEUE``, ``SINGLE`` or
#: ``WITHDRAWN`` (handed back behind a long body; the main process requeued it already); the
#: task events (message position, event, fields); its bodies' moving average run time.
Report = tuple[list[str], list[tuple[int, str, dict[str, Any]]], float]


class _Told(Recorder):
    """What a batch did to each message, kept for the report (the main process holds them)."""

    def __init__(self, worker: str, settings: Settings) -> None:
        self.settings = settings
        self.worker = worker
        self.tally = counters.process_tally(settings)
        self.consumer = None
        self.start([])

    def start(self, items: list[Received]) -> None:
        self.position = {id(item): index for index, item in enumerate(items)}
        self.outcome = [REQUEUE] * len(items)  # an item nothing was said of goes back
        self.events: list[tuple[int, str, dict[str, Any]]] = []

    def ack(self, item: Received) -> None:
        self.outcome[self.position[id(item)]] = ACK

    def ack_all(self, items: list[Received]) -> None:
        for item in items:
            self.ack(item)

    def requeue(self, item: Received) -> None:
        self.outcome[self.position[id(item)]] = REQUEUE

    def single(self, item: Received) -> None:
        self.outcome[self.position[id(item)]] = SINGLE

    def withdrawn(self, item: Received) -> None:
        self.outcome[self.position[id(item)]] = WITHDRAWN

    def event(self, kind: str, item: Received, **fields: Any) -> None:
        self.events.append((self.position[id(item)], kind, fields))

    def restore(self, held: list[Received]) -> None:
        """The main process holds the messages: it puts them back when it learns the process is gone."""

    def timed_out(self, running: Running) -> None:
        """The main process records (and says, once) the attempt the hard limit stops, as it does
        for a per-job pool child: the record marks it ``TIMED_OUT`` for the main process."""
        run = _PoolRun.current
        if run is not None and running.job_id is not None:
            run.unstarted.timed_out(running.job_id)


class _PoolRun(BatchRun):
    out: _Told

    #: This pool process's (made at its first batch).
    current: _PoolRun | None = None

    def _single(self, item: Received) -> None:
        self.out.single(item)

    def _withdrawn(self, item: Received) -> None:
        self.out.withdrawn(item)

    def _long_body(self, running: Running) -> None:
        """In the watching thread: a body of this batch runs long. The successes kept before it
        are recorded now, and the jobs waiting behind it go back to their queues for the other
        pool processes: unclaimed (no attempt spent), then marked in the record, where the main
        process finds them and requeues their messages."""
        batch = self.batch
        if batch is None or self.deadlines.current is not running:  # it returned meanwhile
            return
        self.out.finish(batch)
        with batch.lock:
            ids = list(batch.waiting)
            batch.waiting = {}
            batch.withdrawn.update(ids)
        if not ids:
            return
        try:
            with db.direct(self.settings) as direct:
                ledger.unclaim(direct, ids, worker=self.worker)
        except LedgerUnavailable as error:
            log.error(
                "%d job(s) behind a long body not handed back (%s); their leases will end", len(ids), error
            )
        self.unstarted.withdrawn(ids)
        log.info(  # the kind, not the job: a job's lines are its attempts' outcomes
            "a %s body runs long: %d job(s) waiting behind it in its batch handed back to their queues",
            running.kind.name,
            len(ids),
        )


def _stop(signum: int, frame: FrameType | None) -> None:
    """In a pool process: the worker is stopping (``SHUTDOWN``, from the main process). The
    running body gets the soft shutdown's window (none set: it finishes, as in Celery's warm
    shutdown), and its batch starts no other body (``watchdog.stopping``)."""
    setattr(worker_state, "should_stop", 0)  # noqa: B010 - typed None in celery-types
    run = _PoolRun.current
    window = run.settings.worker_soft_shutdown_timeout if run is not None else 0
    if run is not None and window > 0:
        run.deadlines.shutdown(window)


def init(**_: Any) -> None:
    """``worker_process_init``: a pool process's signals."""
    # A SIGTERM sent to the whole process group (systemd, a terminal, a test harness) is the
    # main process's to act on: its warm shutdown tells each pool process with ``SHUTDOWN``.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(SHUTDOWN, _stop)


def run_batch(worker: str, entries: list[tuple[str, str]]) -> Report:
    """Run one batch in this pool process: ``entries`` are its messages' (job id, task name)."""
    run = _PoolRun.current
    if run is None:
        settings = get_settings()
        run = _PoolRun.current = _PoolRun(worker, settings, _Told(worker, settings), unstarted.Record(None))
        records = os.environ.get(RECORDS)
        if records:
            run.unstarted = unstarted.Record.at(os.path.join(records, str(os.getpid())))
    tasks = current_app.tasks
    items = [
        Received(tasks[name], None, None, None, None, None, None, uuid.UUID(job_id))  # type: ignore[arg-type]
        for job_id, name in entries
    ]
    run.out.start(items)
    run.run(items)
    return run.out.outcome, run.out.events, run.body_seconds
