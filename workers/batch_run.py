"""One batch, run: its claim, its bodies one by one, its finish (``workers.batching`` and
``workers.pool_batches`` feed it; docs/architecture.md, "The batched run path")::

    claim every queued job of the batch ........ one durable statement
    for each message, in order:
        claimed -> its body, under its time limits (workers.deadlines)
                   plain success: kept for the finish; anything else: recorded now,
                   by the single-job path's code (errors, ctx.session, limits, workflows)
        not claimed -> the single-job path (``_single``: Celery's default handling)
    record every kept success .................. one durable statement (workers.recording)
    acknowledge their messages

What runs the batch says what a message's acknowledgement, hand-back and task events are
(its ``Recorder``) and how a message the batch did not claim is run (``_single``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING

from jobs import db, ledger, unstarted
from jobs.errors import LedgerUnavailable
from jobs.kinds import lease_for
from jobs.settings import Settings
from workers import outcomes, runner, watchdog
from workers.deadlines import Deadlines, JobCancelled, Running, ShutdownExpired
from workers.recording import LEDGER_DOWN_PAUSE, Batch, Kept, Received, Recorder

if TYPE_CHECKING:
    from workers.task import LedgerTask

__all__ = ["KEEP_FOR", "BatchRun"]

log = logging.getLogger("jobs.worker")

#: Seconds a success waits for its batch's finish before the next body runs: a batch slowed by a
#: long body records (and acknowledges) what ran before it first.
KEEP_FOR = 0.5


class BatchRun:
    """Runs the batches of one process, one at a time."""

    def __init__(self, worker: str, settings: Settings, out: Recorder, record: unstarted.Record) -> None:
        self.worker = worker
        self.settings = settings
        self.out = out
        self.batch: Batch | None = None
        self.buffer: list[Received] = []  # what waits for the next batch (the consumer's side)
        self.deadlines = Deadlines(
            lambda running: self.out.abandon(running, self.batch, self.buffer),
            self._cancelled,
            on_long=self._long_body,
        )
        self.body_seconds = 0.0  # recent bodies' run time, moving average
        self.unstarted = record  # what it claimed and has not started

    def _single(self, item: Received) -> None:
        """A message the batch did not claim."""
        raise NotImplementedError

    def _withdrawn(self, item: Received) -> None:
        """A message whose job was withdrawn from the batch while a long body ran."""
        self.out.requeue(item)

    def _long_body(self, running: Running) -> None:
        """Called once by the watching thread when a body has run ``deadlines.LONG_BODY`` seconds."""

    def _listed(self, item: Received) -> contextlib.AbstractContextManager[None]:
        """Around a body: where ``inspect active`` finds it (nowhere, here)."""
        return contextlib.nullcontext()

    def run(self, received: list[Received]) -> None:
        batch = self.batch = Batch(received)
        try:
            self._run(batch)
        finally:
            self.out.finish(batch)
            self.unstarted.ended()
            self.batch = None

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
            with batch.lock:
                claimed = batch.waiting.pop(item.job_id, None) if item.job_id is not None else None
            if claimed is None:
                if item.job_id in batch.withdrawn:
                    self._withdrawn(item)
                else:
                    self._single(item)
                continue
            self.unstarted.running(claimed.id)  # before anything of its body runs
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
            with self._listed(item), self.deadlines.running(claimed.id, task, *self._limits(task)):
                runner.run_claimed(
                    self.settings,
                    kind,
                    claimed,
                    self.worker,
                    defer=lambda c, result, started: self._keep(batch, Kept(item, c, result, started)),
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
    def _keep(batch: Batch, kept: Kept) -> None:
        with batch.lock:  # the watching thread may be recording the batch's kept successes
            batch.kept.append(kept)

    @staticmethod
    def _forget(batch: Batch, claimed: ledger.Claimed) -> None:
        """A body stopped as it returned: its kept success (if it got that far) is not recorded."""
        if batch.kept and batch.kept[-1].claimed is claimed:
            batch.kept.pop()

    def _cancelled(self, job_id: uuid.UUID) -> bool:
        """Whether the job was cancelled (asked by the watching thread, about a long body)."""
        with db.autocommit(self.settings) as conn:
            return ledger.state_of(conn, job_id) == "cancelled"

    def _timed(self, began: float) -> None:
        self.body_seconds = 0.8 * self.body_seconds + 0.2 * (time.monotonic() - began)

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
        with batch.lock:
            for job_id in list(batch.waiting):
                if job_id not in held:  # cancelled, or taken over: its message takes the single-job path
                    del batch.waiting[job_id]
                    self.unstarted.started(job_id)

    def _hand_back(self, batch: Batch, rest: list[Received]) -> None:
        """The worker is stopping: the jobs claimed and not started go back to ``queued`` (before
        their messages go back: a message delivered first would find its job still running)."""
        with batch.lock:
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
            if item.job_id in batch.withdrawn:
                self._withdrawn(item)
            else:
                self.out.requeue(item)
