"""Batches in a prefork pool: one Celery node whose pool processes claim, run and record batches.

``jobs worker --batches`` (``JOBS_WORKER_POOL_BATCHES``) is Celery's prefork worker, one node,
whose main process forms batches as a batched worker process does (``workers.batching``:
the batched strategy, one batch's worth of prefetch per pool process, the messages popped
off Redis together) and hands each batch to a pool process in one message, instead of one
per job. In the pool process the batch runs as everywhere (``workers.batch_run``: one claim,
the bodies under their time limits, one finish); what it did to each message comes back in
the reply, and the main process acts on it::

    main process                              pool process
    ------------                              ------------
    receive, form a batch ---- job ids ---->  claim, bodies, finish (durable)
    task events, acknowledge <-- report -----  per message: ack | requeue | single
    single: Celery's default handling (one Request, the single-job path, in the pool)

A message is acknowledged only after its job's outcome committed. A pool process lost
mid-batch (SIGKILL, the OOM killer, its hard time limit) reaches the main process as the
batch's error: it reads the process's record (``jobs.unstarted``, a file named after its
pid), hands back the jobs that had not started (``ledger.unclaim``: no attempt spent), ends
the leases of those that had (a redelivery takes them over, as after a lost prefork child)
and puts every message of the batch back on its queue; the finished ones are absorbed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from types import FrameType
from typing import Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery, current_app
from celery.worker import state as worker_state

from jobs import counters, db, ledger, unstarted
from jobs.errors import LedgerUnavailable
from jobs.settings import Settings, get_settings
from workers import batching, mailbox, watchdog
from workers.batch_run import BatchRun
from workers.batching import Intake
from workers.recording import Received, Recorder

__all__ = ["RECORDS", "Dispatcher", "install", "run_batch"]

log = logging.getLogger("jobs.worker")

#: The environment variable naming the directory of the pool processes' records.
RECORDS = "JOBS_POOL_BATCH_RECORDS"
#: Seconds added to the sum of a batch's hard limits: past it the pool kills the process.
BACKSTOP = 30.0

#: What the main process sends the pool processes that run batches when the worker stops.
SHUTDOWN = signal.SIGUSR2

ACK, REQUEUE, SINGLE = "ack", "requeue", "single"

#: A pool process's report of one batch: per message ``ACK``, ``REQUEUE`` or ``SINGLE``; the
#: task events (message position, event, fields); its bodies' moving average run time.
Report = tuple[list[str], list[tuple[int, str, dict[str, Any]]], float]


# -- in a pool process ----------------------------------------------------------------------------


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

    def event(self, kind: str, item: Received, **fields: Any) -> None:
        self.events.append((self.position[id(item)], kind, fields))

    def restore(self, held: list[Received]) -> None:
        """The main process holds the messages: it puts them back when it learns the process is gone."""


class _PoolRun(BatchRun):
    out: _Told

    #: This pool process's (made at its first batch).
    current: _PoolRun | None = None

    def _single(self, item: Received) -> None:
        self.out.single(item)


def _stop(signum: int, frame: FrameType | None) -> None:
    """In a pool process: the worker is stopping (``SHUTDOWN``, from the main process). The
    running body gets the soft shutdown's window, and its batch starts no other body
    (``watchdog.stopping``)."""
    setattr(worker_state, "should_stop", 0)  # noqa: B010 - typed None in celery-types
    run = _PoolRun.current
    if run is not None:
        run.deadlines.shutdown(run.settings.worker_soft_shutdown_timeout)


def _pool_process_init(**_: Any) -> None:
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


# -- in the main process --------------------------------------------------------------------------


@dataclass(slots=True)
class _InFlight:
    """A batch handed to the pool, and the pool process that took it."""

    items: list[Received]
    pid: int | None = None
    accepted: float = 0.0  # time.monotonic() when a pool process took it
    wall: float = 0.0  # time.time() then


class Dispatcher(Intake):
    """The main process's side: batches out to the pool, their reports acted on."""

    def __init__(self, consumer: Any, settings: Settings, out: Recorder) -> None:
        super().__init__(consumer, settings, out)
        self.worker = str(consumer.hostname)
        self.at_once = max(1, int(getattr(consumer.pool, "limit", None) or 1))
        self.records = os.environ.get(RECORDS)
        self.flights: dict[int, _InFlight] = {}  # the batches in the pool now

    def run(self, received: list[Received]) -> None:
        if watchdog.stopping():  # the worker stops: the pool takes no more batches
            for item in received:
                self.out.requeue(item)
            return
        batch: list[Received] = []
        for item in received:
            if item.job_id is None:
                self.default(item)
            else:
                batch.append(item)
        if not batch:
            return
        flight = _InFlight(batch)
        self.flights[id(flight)] = flight
        backstop = sum(_hard_limit(item, self.settings) for item in batch) + BACKSTOP
        self.consumer.pool.apply_async(
            run_batch,
            args=(self.worker, [(str(item.job_id), item.task.name) for item in batch]),
            callback=lambda report: self._done(flight, report),
            error_callback=lambda error: self._lost(flight, error),
            accept_callback=lambda pid, _accepted: self._accepted(flight, pid),
            timeout=backstop,
            soft_timeout=2 * backstop,  # never: each body's soft limit is its pool process's
        )

    @staticmethod
    def _accepted(flight: _InFlight, pid: int) -> None:
        flight.pid, flight.accepted, flight.wall = pid, time.monotonic(), time.time()

    def _done(self, flight: _InFlight, report: Report) -> None:
        self.flights.pop(id(flight), None)
        try:
            told, events, self.body_seconds = report
            for position, kind, fields in events:
                self.out.event(kind, flight.items[position], **fields)
            self.out.ack_all([item for item, what in zip(flight.items, told, strict=True) if what == ACK])
            for item, what in zip(flight.items, told, strict=True):
                if what == SINGLE:
                    self.default(item)
                elif what != ACK:
                    self.out.requeue(item)
        except Exception:  # never into the pool's result handler: what is not acknowledged goes back
            log.exception("the report of a batch of %d message(s) failed", len(flight.items))
            for item in flight.items:
                if not item.message.acknowledged:
                    self.out.requeue(item)
        self.fit_prefetch()

    def _lost(self, flight: _InFlight, error: Any) -> None:
        """The pool process running the batch was lost (or the batch raised): hand back what had
        not started, end the leases of what had, and put every message back on its queue."""
        self.flights.pop(id(flight), None)
        exception = getattr(error, "exception", error)
        dead = isinstance(exception, (WorkerLostError, TimeLimitExceeded))  # else the batch raised
        record = dict(self._record(flight.pid, gone=dead))
        by_id = {item.job_id: item for item in flight.items if item.job_id is not None}
        waiting = [job_id for job_id in by_id if record.get(job_id) is False]
        started = [job_id for job_id in by_id if record.get(job_id)]
        log.error(
            "a batch of %d job(s) was lost in pool process %s (%r): %d job(s) pool process %s claimed"
            " and never started: handed back to their queues; %d started",
            len(flight.items),
            flight.pid,
            exception,
            len(waiting),
            flight.pid,
            len(started),
        )
        states: dict[uuid.UUID, str] = {}
        try:
            if waiting:
                with db.direct(self.settings) as direct:
                    ledger.unclaim(direct, waiting, worker=self.worker)
            # As the per-job path does for a lost pool process: each started job's lease is
            # released for its redelivery to take it over at once, or it fails on its last attempt.
            why = str(exception) if isinstance(exception, WorkerLostError) else repr(exception)
            ran = round(max(time.monotonic() - flight.accepted, 0.0), 6)
            for job_id in started:
                by_id[job_id].task.lost_child(str(job_id), self.worker, why, ran)
            with db.autocommit(self.settings) as conn:
                states = dict(ledger.states_of(conn, list(by_id)))
        except LedgerUnavailable as problem:
            log.error("the lost batch's jobs were not handed back (%s); their leases will end", problem)
        gone = [item for item in flight.items if _obsolete(states, item.job_id)]
        self.out.ack_all(gone)
        for item in flight.items:
            if item not in gone:
                self.out.requeue(item)

    def bodies(self) -> list[tuple[Received, int, float]]:
        """The bodies running in the pool now (``inspect active``): each in-flight batch's, as its
        pool process's record names it."""
        found = []
        for flight in list(self.flights.values()):
            if flight.pid is None or not self.records:
                continue
            try:
                with open(os.path.join(self.records, str(flight.pid)), "rb") as file:
                    job_id = unstarted.running(file)
            except OSError:
                continue
            for item in flight.items:
                if item.job_id == job_id:
                    found.append((item, flight.pid, flight.wall))
                    break
        return found

    def _record(self, pid: int | None, *, gone: bool) -> list[tuple[uuid.UUID, bool]]:
        """The process's record (empty if it kept none); the file removed if the process is gone."""
        if pid is None or not self.records:
            return []
        path = os.path.join(self.records, str(pid))
        try:
            with open(path, "rb") as file:
                found = unstarted.entries(file)
            if gone:
                os.unlink(path)
        except OSError:
            return []
        return found


def _obsolete(states: dict[uuid.UUID, str], job_id: uuid.UUID | None) -> bool:
    """Whether the job's message is no longer needed: the job is not queued or running (finished,
    or waiting for a retry the leader publishes when due)."""
    return job_id is not None and states.get(job_id, "queued") not in ("queued", "running")


def _hard_limit(item: Received, settings: Settings) -> float:
    return float(item.task.time_limit or settings.hard_time_limit)


def install(app: Celery) -> None:
    """Batches in this prefork worker's pool (``jobs worker --batches``); ``workers.batching``
    does the rest (strategy, prefetch, hand-back of the buffer)."""
    from celery import signals

    batching.install(app)
    Intake.kind = Dispatcher
    records = tempfile.mkdtemp(prefix="jobs-pool-records-")
    os.environ[RECORDS] = records  # the pool processes, forked after this, inherit it

    def remove(**_: Any) -> None:
        shutil.rmtree(records, ignore_errors=True)

    def forget(**_: Any) -> None:  # a pool process that ends in order (recycled) takes its record along
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(records, str(os.getpid())))

    def shutting_down(**_: Any) -> None:  # in the main process, as the warm shutdown begins
        log.warning(
            "Initiating Soft Shutdown: the bodies running in the pool get %gs, then are handed back",
            get_settings().worker_soft_shutdown_timeout,
        )
        for name in os.listdir(records):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(name), SHUTDOWN)

    signals.worker_process_init.connect(_pool_process_init, weak=False)
    signals.worker_shutting_down.connect(shutting_down, weak=False)
    signals.worker_shutdown.connect(remove, weak=False)
    signals.worker_process_shutdown.connect(forget, weak=False)
    mailbox.ELSEWHERE.append(_bodies)


def _bodies() -> list[tuple[Received, int, float]]:
    intake = Intake.current
    return intake.bodies() if isinstance(intake, Dispatcher) else []
