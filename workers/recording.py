"""What a batched worker records and tells about a batch (``workers.batching`` runs it).

- the batch's **finish**: every kept success in one durable statement
  (``ledger.succeed_batch``), then one log line, counter and task event per job,
  then the messages' acknowledgements; a finish PostgreSQL refuses is tried
  again as long as the jobs' leases last;
- the **abandon** at a hard time limit, just before the process exits: the
  timed-out attempt, the kept successes and the hand-back of what the batch had
  not started, and every message the process holds put back on its queue;
- Celery's **task events** for Flower (when task events are on) and the
  messages' acknowledgements and hand-backs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.exceptions import TimeLimitExceeded
from celery.worker import state as worker_state

from jobs import broker, counters, db, jsonsafe, ledger
from jobs.errors import LedgerUnavailable
from jobs.settings import Settings
from workers import outcomes
from workers.deadlines import Running

if TYPE_CHECKING:
    from kombu.message import Message

    from workers.task import LedgerTask

__all__ = ["LEDGER_DOWN_PAUSE", "Batch", "Kept", "Received", "Recorder"]

log = logging.getLogger("jobs.worker")

#: Seconds between two tries at PostgreSQL (and the pause before a batch is handed back).
LEDGER_DOWN_PAUSE = 2.0


@dataclass(slots=True)
class Received:
    """One message as the consumer handed it to the strategy."""

    task: LedgerTask
    message: Message
    body: Any
    ack: Any
    reject: Any
    callbacks: Any
    fallback: Any
    job_id: uuid.UUID | None


@dataclass(slots=True)
class Kept:
    """A plain success waiting for its batch's finish."""

    received: Received
    claimed: ledger.Claimed
    result: Any
    started: float


@dataclass(slots=True)
class Batch:
    """The batch being run: what it claimed and has not started, what it keeps, what it holds."""

    received: list[Received]
    waiting: dict[uuid.UUID, ledger.Claimed] = field(default_factory=dict)
    kept: list[Kept] = field(default_factory=list)
    claimed_at: float = 0.0
    """When the batch's claim committed (``time.monotonic()``): the kept successes' leases run from it."""
    leased_at: float = 0.0
    """When the waiting jobs' leases were last taken (the claim, or ``ledger.renew``)."""
    lease: float = 0.0
    withdrawn: set[uuid.UUID] = field(default_factory=set)
    """Jobs handed back, not started, while a long body ran (``workers.pool_batches``)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Taken to move a job out of ``waiting`` or ``kept``: in a pool process of ``jobs worker
    --batches`` the watching thread withdraws the one and records the other while a long body runs."""


class Recorder:
    """Records and tells the outcomes of one worker process's batches."""

    def __init__(self, consumer: Any, settings: Settings) -> None:
        self.consumer = consumer
        self.settings = settings
        self.worker = str(consumer.hostname)
        self.tally = counters.process_tally(settings)

    def finish(self, batch: Batch) -> None:
        """Record every kept success in one statement, then acknowledge their messages."""
        with batch.lock:  # the watching thread records a long body's batch (workers.pool_process)
            kept, batch.kept = batch.kept, []
        if not kept:
            return
        done: list[tuple[uuid.UUID, int, str | None]] = []
        alone: list[Kept] = []
        for one in kept:
            try:
                text = None if one.result is None else jsonsafe.compact(one.result)
            except ValueError:
                alone.append(one)  # not JSON as the ledger stores it: the single-job path says why
                continue
            done.append((one.claimed.id, one.claimed.attempt, text))
        finished = self._record(done, batch)
        if finished is None:
            for one in kept:
                self.requeue(one.received)
            return
        recorded_now: list[Received] = []
        for one in kept:
            if one in alone:
                self._finish_alone(one)
                continue
            recorded_now.append(one.received)
            recorded = finished.get(one.claimed.id)
            duration = round(time.monotonic() - one.started, 6)
            if recorded is not None:
                self.tally.attempt_ended(
                    recorded.kind, recorded.queue, "succeeded", state="succeeded", ran=recorded.ran
                )
                outcomes.log_line(
                    logging.INFO,
                    one.claimed,
                    one.received.task.kind,
                    "succeeded in %.3fs",
                    duration,
                    state="succeeded",
                    duration=duration,
                    worker=self.worker,
                )
                self.event("task-succeeded", one.received, result=None, runtime=duration)
            else:
                self.not_recorded(one, duration)
        self.ack_all(recorded_now)

    def _record(
        self, done: list[tuple[uuid.UUID, int, str | None]], batch: Batch
    ) -> dict[uuid.UUID, ledger.Finished] | None:
        """The batch's finish, tried again while PostgreSQL is away, as long as the jobs' leases
        last (nothing else may take them meanwhile); ``None`` if it never committed: the jobs stay
        running, their leases end, and they run again."""
        if not done:
            return {}
        give_up = batch.claimed_at + batch.lease - LEDGER_DOWN_PAUSE
        while True:
            try:
                with db.direct(self.settings) as direct:
                    return ledger.succeed_batch(direct, done)
            except LedgerUnavailable as error:
                if time.monotonic() >= give_up or worker_state.should_terminate is not None:
                    log.error(
                        "%d finished job(s) not recorded: %s; messages handed back (they run again"
                        " once their leases end)",
                        len(done),
                        error,
                    )
                    return None
                log.warning("%d finished job(s) not recorded yet: %s; trying again", len(done), error)
                time.sleep(LEDGER_DOWN_PAUSE)

    def _finish_alone(self, one: Kept) -> None:
        try:
            recorded = outcomes.record_success(self.settings, None, one.claimed, one.result)
        except Exception:
            log.exception("job %s: its success could not be recorded; message handed back", one.claimed.id)
            self.requeue(one.received)
            return
        if not recorded:
            self.not_recorded(one, round(time.monotonic() - one.started, 6))
        self.ack(one.received)

    def not_recorded(self, one: Kept, duration: float) -> None:
        """A kept success the ledger refused: the job was cancelled meanwhile, or taken over."""
        try:
            with db.autocommit(self.settings) as conn:
                now = ledger.state_of(conn, one.claimed.id)
        except LedgerUnavailable:
            now = None
        recorded = outcomes.Recorded("cancelled" if now == "cancelled" else "")
        message = f"now {now or 'gone'}: taken over by another attempt"
        outcomes.log_failure(
            one.claimed, one.received.task.kind, recorded, duration, message, worker=self.worker
        )
        self.ended(one.received, recorded.state, message)

    def abandon(self, running: Running, batch: Batch | None, buffer: list[Received]) -> None:
        """The body ``running`` is past its hard limit (called by the watching thread, the process
        ends next): record its attempt, the batch's kept successes and the hand-back of the jobs it
        had not started, and put every message the process holds back on its queue."""
        self.timed_out(running)
        held = list(buffer)
        if batch is not None:
            held += batch.received
            done = [(one.claimed.id, one.claimed.attempt, _json_or_none(one.result)) for one in batch.kept]
            try:
                with db.direct(self.settings) as direct:
                    if done:
                        ledger.succeed_batch(direct, done)
                    if batch.waiting:
                        ledger.unclaim(direct, list(batch.waiting), worker=self.worker)
            except Exception:
                log.exception(
                    "the batch's finished and waiting jobs were not recorded; their leases will end"
                )
        self.restore(held)
        counters.flush_process()

    def timed_out(self, running: Running) -> None:
        """Say and record the attempt the hard limit stops (the process exits next)."""
        task: LedgerTask = running.kind
        ran = round(time.monotonic() - running.started, 6)
        log.critical(
            "job %s %s hit its hard time limit (%gs): this worker process stops it by exiting;"
            " a new process takes its place",
            running.job_id,
            task.name,
            running.hard,
        )
        if running.job_id is not None:
            try:
                task.record_hard_timeout(str(running.job_id), TimeLimitExceeded(running.hard), ran)
            except Exception:
                log.exception(
                    "job %s: its hard time limit was not recorded; its lease will end", running.job_id
                )

    def restore(self, held: list[Received]) -> None:
        """Every message this process holds goes back to its queue now (the finished are absorbed)."""
        try:
            client = broker.client(self.settings)
            for message in broker.held_by_tags(client, [str(item.message.delivery_tag) for item in held]):
                broker.restore(client, message)
        except Exception:
            log.exception("the messages this worker process holds were not handed back; Redis will")

    def ended(self, item: Received, state: str, exception: str) -> None:
        if state == "retrying":
            self.event("task-retried", item, exception=exception, traceback="")
        elif state == "failed":
            self.event("task-failed", item, exception=exception, traceback="")
        elif state == "cancelled":
            self.event("task-revoked", item, terminated=True, signum=None, expired=False)

    def event(self, kind: str, item: Received, **fields: Any) -> None:
        """A Celery task event for Flower, when task events are on (``workers.events``)."""
        dispatcher = self.consumer.event_dispatcher
        if dispatcher is None or not dispatcher.enabled or not item.task.send_events:
            return
        if dispatcher.groups and "task" not in dispatcher.groups:
            return
        headers = item.message.headers
        if kind == "task-started":  # announce it received too: Flower lists a task from that event
            dispatcher.send(
                "task-received",
                uuid=headers.get("id"),
                name=item.task.name,
                args=headers.get("argsrepr"),
                kwargs=headers.get("kwargsrepr"),
                root_id=headers.get("root_id"),
                parent_id=headers.get("parent_id"),
                retries=headers.get("retries", 0),
                eta=None,
                expires=None,
            )
        dispatcher.send(kind, uuid=headers.get("id"), **fields)

    def ack(self, item: Received) -> None:
        item.message.ack_log_error(log, self.consumer.connection_errors)

    def ack_all(self, items: list[Received]) -> None:
        """Acknowledge several messages in one round trip to Redis when the transport can
        (``workers.transport.Channel.ack_many``), else one by one."""
        waiting = [item for item in items if not item.message.acknowledged]
        ack_many = getattr(waiting[0].message.channel, "ack_many", None) if waiting else None
        if ack_many is None or len(waiting) == 1:
            for item in waiting:
                self.ack(item)
            return
        try:
            ack_many([item.message.delivery_tag for item in waiting])
        except self.consumer.connection_errors as error:
            # As kombu's ack_log_error: the messages stay unacknowledged, to be redelivered.
            log.critical("couldn't acknowledge %d message(s), reason: %r", len(waiting), error)
            return
        for item in waiting:
            acked: Any = item.message  # kombu's stubs leave out the state Message.ack records
            acked._state = "ACK"

    def requeue(self, item: Received) -> None:
        item.message.reject_log_error(log, self.consumer.connection_errors, requeue=True)


def _json_or_none(value: Any) -> str | None:
    try:
        return None if value is None else jsonsafe.compact(value)
    except ValueError:
        return None
