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

import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from celery import Celery, bootsteps
from celery.app.trace import LOG_RECEIVED
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default as default_strategy
from kombu.exceptions import ContentDisallowed, DecodeError

from jobs import unstarted
from jobs.settings import Settings, get_settings
from workers import deadlines, mailbox, transport, watchdog
from workers.batch_run import BatchRun
from workers.deadlines import ShutdownExpired
from workers.recording import Received, Recorder

if TYPE_CHECKING:
    from kombu.message import Message

    from workers.task import LedgerTask

__all__ = ["Batcher", "Batching", "Intake", "install", "strategy"]

log = logging.getLogger("jobs.worker")

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


class Intake:
    """The consumer's side of batching: the messages received in the last few milliseconds
    become one batch, handed to ``run`` (in this process: ``Batcher``; in a prefork pool
    process: ``workers.pool_batches``)."""

    #: The intake of this process's consumer (one consumer per worker process).
    current: ClassVar[Intake | None] = None
    #: What ``of`` builds (``install`` chooses).
    kind: ClassVar[type[Intake]]
    #: Batches that run at once (the prefetch holds that many batches' worth).
    at_once = 1

    def __init__(self, consumer: Any, settings: Settings, out: Recorder) -> None:
        self.consumer = consumer
        self.settings = settings
        self.out = out
        self.buffer: list[Received] = []
        self.timer: Any = None
        self.last_activity = float("-inf")  # the last message received, or the last batch's end
        self.body_seconds = 0.0  # recent bodies' run time, moving average
        self.prefetch = settings.worker_batch_size
        self.qos: Any = None

    @classmethod
    def of(cls, consumer: Any) -> Intake:
        intake = cls.current
        if intake is None or intake.consumer is not consumer:
            settings = get_settings()
            intake = Intake.current = cls.kind(consumer, settings, Recorder(consumer, settings))
        return intake

    def run(self, received: list[Received]) -> None:
        raise NotImplementedError

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

    def default(self, item: Received) -> None:
        """Celery's default handling of a message (the single-job path); a message it cannot read
        goes where the consumer sends it (``workers.consumer``)."""
        try:
            item.fallback(item.message, item.body, item.ack, item.reject, item.callbacks)
        except (InvalidTaskError, ContentDisallowed) as error:
            self.consumer.on_invalid_task(item.body, item.message, error)
        except DecodeError as error:
            self.consumer.on_decode_error(item.message, error)

    def fit_prefetch(self) -> None:
        """Hold about ``BATCH_BUDGET`` seconds of bodies per batch running at once: the batch
        size for short bodies, fewer messages as they run longer (Celery's prefetch count,
        changed as its autoscaler does)."""
        per_batch = max(
            1, min(self.settings.worker_batch_size, int(BATCH_BUDGET / max(self.body_seconds, 1e-6)))
        )
        wanted = per_batch * self.at_once
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


class Batcher(Intake, BatchRun):
    """The batches of a batched worker process (``-P batched``), run in the process itself."""

    def __init__(self, consumer: Any, settings: Settings, out: Recorder) -> None:
        Intake.__init__(self, consumer, settings, out)
        BatchRun.__init__(self, str(consumer.hostname), settings, out, unstarted.Record.from_env())

    def run(self, received: list[Received]) -> None:
        try:
            BatchRun.run(self, received)
        finally:
            self.last_activity = time.monotonic()
        deadlines.recycle_past(self.settings.worker_max_memory_per_child)
        self.fit_prefetch()

    def _listed(self, item: Received) -> contextlib.AbstractContextManager[None]:
        return mailbox.running(item, self.worker)

    def _single(self, item: Received) -> None:
        """Celery's default handling (the single-job path), under the kind's time limits; a
        message it cannot read goes where the consumer sends it (``workers.consumer``)."""
        task = item.task
        with self.deadlines.running(item.job_id, task, *self._limits(task)):
            try:
                self.default(item)
            except ShutdownExpired:
                if item.job_id is not None:
                    task.release_lease(str(item.job_id), self.worker, "the worker's soft shutdown expired")
                self.out.requeue(item)


Intake.kind = Batcher


#: Celery's logger of its "Task name[id] received" line (demoted to DEBUG by ``jobs.logs``).
_received = logging.getLogger("celery.worker.strategy")


def _log_received(task: LedgerTask, message: Message) -> None:
    """Celery's line for a message its default strategy receives, for a batched one too: the
    masked payload only (``argsrepr``, ``kwargsrepr``), as Celery's own line carries."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    context = {
        "id": headers.get("id"),
        "name": task.name,
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
        "eta": None,
    }
    _received.info(LOG_RECEIVED, context, extra={"data": context})


def strategy(task: LedgerTask, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """The batched strategy of one kind's task (``Task.Strategy``): its messages join the
    process's batch; Celery's default handler runs those the batch does not claim."""
    fallback = default_strategy(task, app, consumer, **kwargs)
    intake = Intake.of(consumer)

    def handle(message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> None:
        if _received.isEnabledFor(logging.DEBUG):
            _log_received(task, message)
        intake.receive(Received(task, message, body, ack, reject, callbacks, fallback, _job_id(message)))

    return handle


class Batching(bootsteps.StartStopStep):
    """Hands back the messages waiting in the buffer when the consumer stops."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "batching"

    def stop(self, c: Any) -> None:
        intake = Intake.current
        if intake is not None and intake.consumer is c:
            intake.hand_back_buffer()

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
        batcher = Intake.current
        if isinstance(batcher, Batcher):
            batcher.deadlines.shutdown(settings.worker_soft_shutdown_timeout)

    signals.worker_shutting_down.connect(shutting_down, weak=False)
