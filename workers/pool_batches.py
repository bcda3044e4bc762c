"""Batches in a prefork pool: one Celery node whose pool processes claim, run and record batches.

``jobs worker --batches`` (``JOBS_WORKER_POOL_BATCHES``) is Celery's prefork worker, one node,
whose main process forms batches as a batched worker process does (``workers.batching``:
the batched strategy, one batch's worth of prefetch per pool process, the messages popped
off Redis together) and hands each batch to a pool process in one message, instead of one
per job. In the pool process the batch runs as everywhere (``workers.batch_run``: one claim,
the bodies under their time limits, one finish); what it did to each message comes back in
the reply, and the main process acts on it::

    main process                              pool process (workers.pool_process)
    ------------                              ------------
    receive, form a batch ---- job ids ---->  claim, bodies, finish (durable)
    task events, acknowledge <-- report -----  per message: ack | requeue | single | withdrawn
    single: Celery's default handling (one Request, the single-job path, in the pool)

A body that runs long (``deadlines.LONG_BODY``) would hold the jobs claimed behind it in its
batch: its pool process withdraws them (unclaimed, marked in its record), and the main
process, which looks at the records of long batches every ``WITHDRAWN_CHECK`` seconds,
requeues their messages at once for the other pool processes.

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
from typing import Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]  # missing from the stubs
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery
from celery.exceptions import TimeLimitExceeded as CeleryTimeLimit

from jobs import db, ledger, unstarted
from jobs.errors import LedgerUnavailable
from jobs.settings import Settings, get_settings
from workers import batching, consumer, deadlines, mailbox, pool_process, watchdog
from workers.batching import Intake
from workers.pool_process import ACK, RECORDS, SHUTDOWN, SINGLE, Report, run_batch
from workers.recording import Received, Recorder

__all__ = ["Dispatcher", "install"]

log = logging.getLogger("jobs.worker")

#: Seconds added to the sum of a batch's hard limits: past it the pool kills the process.
BACKSTOP = 30.0
#: How often the main process looks for jobs withdrawn from the batches in its pool, seconds.
WITHDRAWN_CHECK = 0.25


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
        self.watching = False

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
        self._watch()
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

    def _watch(self) -> None:
        """Look for withdrawn jobs every ``WITHDRAWN_CHECK`` seconds, from the first batch on."""
        hub = self.consumer.controller.hub if self.consumer.controller is not None else None
        if not self.watching and hub is not None:
            self.watching = True
            hub.call_repeatedly(WITHDRAWN_CHECK, self._withdrawn)

    def _withdrawn(self) -> None:
        """Requeue the messages of the jobs a pool process withdrew from its batch behind a long
        body (its record marks them ``WITHDRAWN``, after their unclaim committed)."""
        now = time.monotonic()
        for flight in list(self.flights.values()):
            if flight.pid is None or now - flight.accepted < deadlines.LONG_BODY:
                continue
            states = dict(self._record(flight.pid, gone=False))
            for item in flight.items:
                if states.get(item.job_id) == unstarted.WITHDRAWN:  # type: ignore[arg-type]
                    self._requeue(item)

    def _requeue(self, item: Received) -> None:
        if not item.message.acknowledged:  # withdrawn: requeued already
            self.out.requeue(item)

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
                elif what != ACK:  # requeue, or withdrawn (requeued already, unless just now)
                    self._requeue(item)
        except Exception:  # never into the pool's result handler: what is not acknowledged goes back
            log.exception("the report of a batch of %d message(s) failed", len(flight.items))
            for item in flight.items:
                self._requeue(item)
        self.fit_prefetch()

    def stop_at_once(self) -> None:
        """The cold shutdown (a second Ctrl-C, SIGQUIT): the pool processes running batches stop
        now, and their jobs are handed back at once, as the per-job path hands back a running
        job (``LedgerRequest.cancel``): the running body's lease released, the jobs waiting
        unclaimed, their messages requeued."""
        flights = list(self.flights.values())
        for flight in flights:
            if flight.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(flight.pid, signal.SIGKILL)
        for flight in flights:
            self._lost(flight, WorkerLostError("the worker's cold shutdown stopped it"), cold=True)

    def _lost(self, flight: _InFlight, error: Any, *, cold: bool = False) -> None:
        """The pool process running the batch was lost (or the batch raised): hand back what had
        not started, end the leases of what had, and put every message back on its queue."""
        if self.flights.pop(id(flight), None) is None:  # handed back already (the cold shutdown)
            return
        exception = getattr(error, "exception", error)
        if isinstance(exception, ExceptionWithTraceback):
            exception = exception.exc
        dead = isinstance(exception, (WorkerLostError, TimeLimitExceeded))  # else the batch raised
        record = dict(self._record(flight.pid, gone=dead))
        by_id = {item.job_id: item for item in flight.items if item.job_id is not None}
        waiting = [job_id for job_id in by_id if record.get(job_id) == unstarted.NOT_STARTED]
        started = [job_id for job_id in by_id if record.get(job_id) == unstarted.STARTED]
        timed_out = [job_id for job_id in by_id if record.get(job_id) == unstarted.TIMED_OUT]
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
            for job_id in timed_out:  # its pool process stopped at the body's hard limit
                item = by_id[job_id]
                hard = _hard_limit(item, self.settings)
                item.task.record_hard_timeout(str(job_id), CeleryTimeLimit(hard), ran)
            for job_id in started:
                task = by_id[job_id].task
                if cold:
                    task.release_lease(str(job_id), self.worker, "the worker's cold shutdown stopped it")
                else:
                    task.lost_child(str(job_id), self.worker, why, ran)
            with db.autocommit(self.settings) as conn:
                states = dict(ledger.states_of(conn, list(by_id)))
        except LedgerUnavailable as problem:
            log.error("the lost batch's jobs were not handed back (%s); their leases will end", problem)
        gone = [item for item in flight.items if _obsolete(states, item.job_id)]
        self.out.ack_all(gone)
        for item in flight.items:
            if item not in gone:
                self._requeue(item)

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

    def _record(self, pid: int | None, *, gone: bool) -> list[tuple[uuid.UUID, int]]:
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

    def shutting_down(how: str = "Warm", **_: Any) -> None:  # in the main process
        if how != "Warm":  # the cold shutdown stopped them already (stop_at_once)
            return
        window = get_settings().worker_soft_shutdown_timeout
        if window > 0:
            log.warning(
                "Initiating Soft Shutdown: the bodies running in the pool get %gs, then are handed back",
                window,
            )
        for name in os.listdir(records):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(name), SHUTDOWN)

    signals.worker_process_init.connect(pool_process.init, weak=False)
    signals.worker_shutting_down.connect(shutting_down, weak=False)
    signals.worker_shutdown.connect(remove, weak=False)
    signals.worker_process_shutdown.connect(forget, weak=False)
    mailbox.ELSEWHERE.append(_bodies)
    consumer.ALSO_CANCEL.append(_stop_at_once)


def _stop_at_once() -> None:
    intake = Intake.current
    if isinstance(intake, Dispatcher):
        intake.stop_at_once()


def _bodies() -> list[tuple[Received, int, float]]:
    intake = Intake.current
    return intake.bodies() if isinstance(intake, Dispatcher) else []
