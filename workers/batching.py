"""The batched worker: what a worker process received in the last few milliseconds runs as one batch.

``jobs worker -P batched -c N`` runs N single-process Celery workers (``-P solo``) under
a supervisor (``jobs.batched_pool``). In each, every kind's task handles its messages
with this module's strategy (Celery's ``Task.Strategy`` hook) instead of Celery's default
one; Celery's consumer does the rest (receiving, prefetch, queue pauses), with remote control
and event heartbeats in threads of their own (``workers.mailbox``) so they are answered and
sent while a body runs. One batch (docs/architecture.md, "The batched run path")::

    claim every queued job of the batch ........ one durable statement
    for each message, in order:
        claimed -> its body, under its time limits (workers.deadlines)
                   plain success: kept for the finish; anything else: recorded now,
                   by the single-job path's code (errors, ctx.session, limits, workflows)
        not claimed -> Celery's default handling: the single-job path
    record every kept success .................. one durable statement (workers.recording)
    acknowledge their messages

A message is acknowledged only after its job's outcome is durable. A process killed after
bodies ran and before their batch committed leaves those jobs ``running``: the supervisor
ends their leases and they run again; jobs claimed but not started when the worker stops
go back to ``queued`` with their attempt undone (``ledger.unclaim``); killed, it leaves that
to its supervisor, which reads them in its record (``jobs.unstarted``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default as default_strategy
from kombu.exceptions import ContentDisallowed, DecodeError

from jobs import db, ledger, unstarted
from jobs.errors import LedgerUnavailable
from jobs.kinds import lease_for
from jobs.settings import Settings, get_settings
from workers import deadlines, mailbox, outcomes, runner, transport, watchdog
from workers.deadlines import Deadlines, JobCancelled, ShutdownExpired
from workers.recording import LEDGER_DOWN_PAUSE, Batch, Kept, Received, Recorder

if TYPE_CHECKING:
    from kombu.message import Message

    from workers.task import LedgerTask

__all__ = ["Batcher", "Batching", "install", "strategy"]

log = logging.getLogger("jobs.worker")

#: Seconds a success waits for its batch's finish before the next body runs: a batch slowed by a
#: long body records (and acknowledges) what ran before it first.
KEEP_FOR = 0.5
#: Seconds of bodies one batch may hold: the prefetch shrinks for long bodies (one at a time for
#: bodies of 100 ms or more), so a message never waits long behind others in its process.
BATCH_BUDGET = 0.1


def _job_id(message: Message) -> uuid.UUID | None:
    """The job id of a message the batch may claim: a protocol-2 message with a UUID for its id
    and no ETA or expiry (those go through Celery's default handling)."""
    headers = message.headers
    if not isinstance(headers, dict) or headers.get("eta") or headers.get("expires"):
        return None
    try:
        return uuid.UUID(str(headers.get("id")))
    except ValueError:
        return None


class Batcher:
    """The batches of one worker process (one per consumer)."""

    def __init__(self, consumer: Any, settings: Settings) -> None:
        self.consumer = consumer
        self.settings = settings
        self.worker = str(consumer.hostname)
        self.buffer: list[Received] = []
        self.timer: Any = None
        self.batch: Batch | None = None
        self.out = Recorder(consumer, settings)
        self.deadlines = Deadlines(
            lambda running: self.out.abandon(running, self.batch, self.buffer), self._cancelled
        )
        self.last_activity = float("-inf")  # the last message received, or the last batch's end
        self.body_seconds = 0.0  # recent bodies' run time, moving average
        self.prefetch = settings.worker_batch_size
        self.qos: Any = None
        self.unstarted = unstarted.Record.from_env()  # what it claimed and has not started

    #: The batcher of this process's consumer (one consumer per worker process).
    current: Batcher | None = None

    @classmethod
    def of(cls, consumer: Any) -> Batcher:
        batcher = cls.current
        if batcher is None or batcher.consumer is not consumer:
            batcher = cls.current = cls(consumer, get_settings())
        return batcher

    # -- forming a batch ------------------------------------------------------------------------

    def receive(self, received: Received) -> None:
        watchdog.Receipts.add()  # the stall watchdog counts what this consumer takes
        self.buffer.append(received)
        if len(self.buffer) >= self.settings.worker_batch_size:
            self.flush()
        elif len(self.buffer) == 1:
            # Messages arriving close together (or right after a batch) form a batch over the
            # window; one arriving alone runs at the event loop's next turn, without the wait.
            now = time.monotonic()
            window = self.settings.worker_batch_window
            dense = now - self.last_activity < window
            hub = self.consumer.controller.hub if self.consumer.controller is not None else None
            if hub is None:
                self.flush()
            elif dense:
                self.timer = hub.call_later(window, self.flush)
            else:
                hub.call_soon(self.flush)
        self.last_activity = time.monotonic()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        received, self.buffer = self.buffer, []
        if not received:
            return
        try:
            self.run(received)
        except Exception:  # a bug here must not take the consumer down: the messages go back
            log.exception("a batch of %d message(s) failed; those not acknowledged go back", len(received))
            for item in received:
                if not item.message.acknowledged:
                    self.out.requeue(item)

    def hand_back_buffer(self) -> None:
        """The consumer stops (shutdown, lost connection): what waits in the buffer goes back."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        received, self.buffer = self.buffer, []
        for item in received:
            self.out.requeue(item)

    # -- running a batch ------------------------------------------------------------------------

    def run(self, received: list[Received]) -> None:
        batch = self.batch = Batch(received)
        try:
            self._run(batch)
        finally:
            self.out.finish(batch)
            self.unstarted.ended()
            self.batch = None
            self.last_activity = time.monotonic()
        deadlines.recycle_past(self.settings.worker_max_memory_per_child)
        self._fit_prefetch()

    def _run(self, batch: Batch) -> None:
        if watchdog.stopping():
            for item in batch.received:
                self.out.requeue(item)
            return
        ids: dict[uuid.UUID, Received] = {}
        for item in batch.received:
            if item.job_id is not None and item.job_id not in ids:
                ids[item.job_id] = item
        if ids and not self._claim(batch, ids):
            return
        for index, item in enumerate(batch.received):
            if watchdog.stopping():
                self._hand_back(batch, batch.received[index:])
                return
            if batch.kept and time.monotonic() - batch.kept[0].started > KEEP_FOR:
                self.out.finish(batch)  # a slow batch: record what ran before the next body
            claimed = batch.waiting.pop(item.job_id, None) if item.job_id is not None else None
            if claimed is None:
                self._single(item)
                continue
            self.unstarted.started(claimed.id)  # before anything of its body runs
            self._renew(batch)
            if not self._attempt(batch, item, claimed):
                self._hand_back(batch, batch.received[index + 1 :])
                return

    def _claim(self, batch: Batch, ids: dict[uuid.UUID, Received]) -> bool:
        """Claim the batch's queued jobs in one statement; ``False``: the ledger is away."""
        batch.lease = max(lease_for(self.settings, item.task.kind) for item in ids.values())
        try:
            with db.direct(self.settings) as direct:
                batch.waiting = ledger.claim_batch(direct, list(ids), worker=self.worker, lease=batch.lease)
        except LedgerUnavailable as error:
            log.error("%d job(s) not run: %s; messages handed back", len(batch.received), error)
            time.sleep(LEDGER_DOWN_PAUSE)
            for item in batch.received:
                self.out.requeue(item)
            return False
        batch.claimed_at = batch.leased_at = time.monotonic()
        self.unstarted.claimed(batch.waiting)
        return True

    def _attempt(self, batch: Batch, item: Received, claimed: ledger.Claimed) -> bool:
        """Run one claimed job; ``False`` when the batch must stop (shutdown)."""
        task = item.task
        kind = task.kind
        self.out.event("task-started", item)
        began = time.monotonic()
        try:
            with (
                mailbox.running(item, self.worker),
                self.deadlines.running(claimed.id, task, *self._limits(task)),
            ):
                runner.run_claimed(
                    self.settings,
                    kind,
                    claimed,
                    self.worker,
                    defer=lambda c, result, started: batch.kept.append(Kept(item, c, result, started)),
                )
        except ShutdownExpired:
            self._forget(batch, claimed)
            task.release_lease(
                str(claimed.id), self.worker, "the worker's soft shutdown expired while it ran"
            )
            self.out.requeue(item)
            return False
        except JobCancelled:  # stopped: the ledger says cancelled already, its work rolled back
            self._forget(batch, claimed)
            duration = round(time.monotonic() - began, 6)
            outcomes.log_failure(
                claimed, kind, outcomes.Recorded("cancelled"), duration, "", worker=self.worker
            )
            self.out.ended(item, "cancelled", "")
            self.out.ack(item)
        except outcomes.AttemptFailed as failed:
            self._timed(began)
            self.out.ended(item, failed.state, repr(failed))
            self.out.ack(item)
        except LedgerUnavailable as error:
            # The attempt ran (or failed) and could not be recorded: its job stays running until
            # its lease ends, then runs again; the message goes back meanwhile.
            log.error("job %s: %s; not recorded, message handed back", claimed.id, error)
            time.sleep(LEDGER_DOWN_PAUSE)
            self.out.requeue(item)
        except Exception:
            log.exception("job %s: the worker failed running it; message handed back", claimed.id)
            self.out.requeue(item)
        else:
            self._timed(began)
            if not batch.kept or batch.kept[-1].claimed is not claimed:  # recorded on its own path
                self.out.event("task-succeeded", item, result=None, runtime=None)
                self.out.ack(item)
        return True

    @staticmethod
    def _forget(batch: Batch, claimed: ledger.Claimed) -> None:
        """A body stopped as it returned: its kept success (if it got that far) is not recorded."""
        if batch.kept and batch.kept[-1].claimed is claimed:
            batch.kept.pop()

    def _single(self, item: Received) -> None:
        """Celery's default handling (the single-job path), under the kind's time limits; a
        message it cannot read goes where the consumer sends it (``workers.consumer``)."""
        task = item.task
        with self.deadlines.running(item.job_id, task, *self._limits(task)):
            try:
                item.fallback(item.message, item.body, item.ack, item.reject, item.callbacks)
            except (InvalidTaskError, ContentDisallowed) as error:
                self.consumer.on_invalid_task(item.body, item.message, error)
            except DecodeError as error:
                self.consumer.on_decode_error(item.message, error)
            except ShutdownExpired:
                if item.job_id is not None:
                    task.release_lease(str(item.job_id), self.worker, "the worker's soft shutdown expired")
                self.out.requeue(item)

    def _cancelled(self, job_id: uuid.UUID) -> bool:
        """Whether the job was cancelled (asked by the watching thread, about a long body)."""
        with db.autocommit(self.settings) as conn:
            return ledger.state_of(conn, job_id) == "cancelled"

    def _timed(self, began: float) -> None:
        self.body_seconds = 0.8 * self.body_seconds + 0.2 * (time.monotonic() - began)

    def _fit_prefetch(self) -> None:
        """Hold about ``BATCH_BUDGET`` seconds of bodies: the batch size for short bodies, fewer
        messages as they run longer (Celery's prefetch count, changed as its autoscaler does)."""
        wanted = max(
            1, min(self.settings.worker_batch_size, int(BATCH_BUDGET / max(self.body_seconds, 1e-6)))
        )
        qos = self.consumer.qos
        if qos is None:
            return
        if qos is not self.qos:  # a new connection starts from the configured prefetch
            self.qos, self.prefetch = qos, int(qos.value)
        if wanted == self.prefetch:
            return
        if wanted > self.prefetch:
            qos.increment_eventually(wanted - self.prefetch)
        else:
            qos.decrement_eventually(self.prefetch - wanted)
        qos.update()
        self.prefetch = wanted

    def _limits(self, task: LedgerTask) -> tuple[float, float]:
        """The kind's soft and hard time limits (``register_kinds`` set them from the settings)."""
        soft = task.soft_time_limit or self.settings.soft_time_limit
        return float(soft), float(task.time_limit or self.settings.hard_time_limit)

    def _renew(self, batch: Batch) -> None:
        """Extend the leases of the jobs still waiting their turn before half the margin is gone."""
        if not batch.waiting or time.monotonic() - batch.leased_at < self.settings.lease_margin / 2:
            return
        try:
            with db.direct(self.settings) as direct:
                held = ledger.renew(direct, list(batch.waiting), worker=self.worker, lease=batch.lease)
        except LedgerUnavailable as error:
            log.warning("the leases of %d waiting job(s) were not renewed: %s", len(batch.waiting), error)
            return
        batch.leased_at = time.monotonic()
        for job_id in list(batch.waiting):
            if job_id not in held:  # cancelled, or taken over: its message takes the single-job path
                del batch.waiting[job_id]
                self.unstarted.started(job_id)

    def _hand_back(self, batch: Batch, rest: list[Received]) -> None:
        """The worker is stopping: the jobs claimed and not started go back to ``queued`` (before
        their messages go back: a message delivered first would find its job still running)."""
        waiting, batch.waiting = list(batch.waiting), {}
        try:
            if waiting:
                with db.direct(self.settings) as direct:
                    undone = ledger.unclaim(direct, waiting, worker=self.worker)
                log.info("%d claimed job(s) not started: handed back to their queues", len(undone))
        except LedgerUnavailable as error:
            log.error(
                "%d claimed job(s) not started and not handed back (%s); their leases will end",
                len(waiting),
                error,
            )
        for item in rest:
            self.out.requeue(item)


def strategy(task: LedgerTask, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """The batched strategy of one kind's task (``Task.Strategy``): its messages join the
    process's batch; Celery's default handler runs those the batch does not claim."""
    fallback = default_strategy(task, app, consumer, **kwargs)
    batcher = Batcher.of(consumer)

    def handle(message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> None:
        batcher.receive(Received(task, message, body, ack, reject, callbacks, fallback, _job_id(message)))

    return handle


class Batching(bootsteps.StartStopStep):
    """Hands back the messages waiting in the buffer when the consumer stops."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "batching"

    def stop(self, c: Any) -> None:
        batcher = Batcher.current
        if batcher is not None and batcher.consumer is c:
            batcher.hand_back_buffer()

    shutdown = stop


def install(app: Celery) -> None:
    """Batch this worker process's jobs (``JOBS_WORKER_BATCHED``, set by ``jobs worker -P batched``):
    prefetch one batch's worth and take it off Redis in one round trip, hand back the buffer on
    stop, give a running body the soft shutdown's window."""
    from celery import signals

    settings = get_settings()
    app.conf.worker_prefetch_multiplier = settings.worker_batch_size
    # A batch's messages come off Redis together: one round trip after the first (workers.transport).
    transport.Channel.pop_many = True
    # Celery's own window would freeze the body it waits for (it sleeps in the signal handler, in
    # this very process): workers.deadlines gives the running body that window instead.
    app.conf.worker_soft_shutdown_timeout = 0
    app.steps["consumer"].add(Batching)

    def shutting_down(**_: Any) -> None:
        batcher = Batcher.current
        if batcher is not None:
            batcher.deadlines.shutdown(settings.worker_soft_shutdown_timeout)

    signals.worker_shutting_down.connect(shutting_down, weak=False)
