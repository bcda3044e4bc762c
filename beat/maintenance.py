"""The leader's maintenance loops. Each is a small object: a name, an interval, and ``run``.

- **stager**: publishes delayed and retrying jobs whose time has come;
- **relay**: publishes committed jobs that were never published (Redis was
  down at submit, or the producer died between commit and publish), and jobs
  a worker handed back because it lacks their kind, once a live worker has it;
- **republisher**: publishes again queued jobs that no worker took for
  ``JOBS_REPUBLISH_AFTER`` seconds (their message may be lost);
- **rescuer**: moves running jobs whose lease expired (their worker died) to
  ``retrying``, or to ``failed`` on their last attempt.

- **pruner**: deletes finished jobs past their retention, in bounded batches
  (failed jobs are kept longer than succeeded and cancelled ones), and workers
  gone from the roster for as long as succeeded jobs are kept.
- **cron**: fires the due slots of the schedules (``beat.cron``).
- **redrive**: notices that Redis lost its data and publishes every queued
  job again (``beat.redrive``).
- **reclaimer**: puts back on their queues the messages a lost worker had
  taken but not started (``beat.reclaim``).

More loops slot in by adding to ``default_loops``. The runner
records when each loop last ran, and its result or error, in
``maintenance_runs`` (``jobs.maintenance_runs``, at most every ``RECORD_EVERY``
seconds), which ``jobs schedule list`` shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from celery import Celery

from jobs import counters, db, ledger, maintenance_runs, publisher, roster
from jobs.kinds import Registry
from jobs.settings import Settings

__all__ = [
    "Loop",
    "Maintenance",
    "Pruner",
    "Relay",
    "Republisher",
    "Rescuer",
    "Runner",
    "Stager",
    "default_loops",
]

log = logging.getLogger("jobs.beat")

BATCH = 1000
RECORD_EVERY = 5.0


@dataclass
class Maintenance:
    """What every loop gets: settings, the app to publish with, the kinds."""

    settings: Settings
    app: Celery
    registry: Registry


class Loop(Protocol):
    name: str
    interval: float

    def run(self, env: Maintenance) -> int:
        """Do one round; returns how many jobs it moved."""


def _publish_taken(env: Maintenance, take: Callable[[sa.Connection], list[ledger.Published]]) -> int:
    """Take jobs for publishing in one statement, then send them (what fails goes back to the relay)."""
    with db.autocommit(env.settings) as conn:
        taken = take(conn)
    if not taken:
        return 0
    return publisher.publish_committed(env.settings, env.registry, taken)


@dataclass
class Stager:
    interval: float
    name: str = "stager"

    def run(self, env: Maintenance) -> int:
        moved = 0
        while True:
            sent = _publish_taken(env, lambda conn: ledger.stage_due(conn, limit=BATCH))
            moved += sent
            if sent < BATCH:
                return moved


@dataclass
class Relay:
    interval: float
    grace: float
    name: str = "relay"

    def run(self, env: Maintenance) -> int:
        alive_within = env.settings.worker_dead_after
        sent = _publish_taken(
            env,
            lambda conn: ledger.take_unpublished(
                conn, older_than=self.grace, alive_within=alive_within, limit=BATCH
            ),
        )
        if sent:
            log.info(
                "relay: published %d job(s) that were not on the broker (never sent, or handed back"
                " by a worker that lacks their kind)",
                sent,
            )
        return sent


@dataclass
class Republisher:
    """Publishes again queued jobs that no worker took for ``after`` seconds: their message may be lost."""

    interval: float
    after: float
    name: str = "republisher"

    def run(self, env: Maintenance) -> int:
        sent = _publish_taken(
            env, lambda conn: ledger.republish_stale(conn, older_than=self.after, limit=BATCH)
        )
        if sent:
            log.warning(
                "republisher: %d queued job(s) untouched for %gs were published again", sent, self.after
            )
        return sent


@dataclass
class Rescuer:
    interval: float
    name: str = "rescuer"

    def run(self, env: Maintenance) -> int:
        tally = counters.Tally()
        with db.transaction(env.settings) as conn:
            rescued = ledger.rescue_expired(conn, limit=BATCH, tally=tally)
            counters.write(conn, tally.take())  # the counts commit with the rescue
        for job_id, state in rescued:
            log.warning("rescuer: job %s lost its worker; now %s", job_id, state)
        return len(rescued)


@dataclass
class Pruner:
    interval: float
    retention_finished: float
    retention_failed: float
    batch: int = BATCH
    max_batches: int = 50
    name: str = "pruner"

    def run(self, env: Maintenance) -> int:
        removed = 0
        for states, older_than in (
            (("succeeded", "cancelled"), self.retention_finished),
            (("failed",), self.retention_failed),
        ):
            for _ in range(self.max_batches):  # bounded work per round; the rest waits for the next
                with db.transaction(env.settings) as conn:
                    deleted = ledger.prune(conn, states=states, older_than=older_than, limit=self.batch)
                removed += deleted
                if deleted < self.batch:
                    break
        with db.transaction(env.settings) as conn:
            # Workers gone as long as succeeded jobs are kept: the jobs they ran are gone too.
            forgotten = roster.prune(conn, older_than=self.retention_finished)
        if removed:
            log.info("pruner: removed %d finished job(s) past their retention", removed)
        if forgotten:
            log.info("pruner: removed %d worker(s) gone from the roster for that long", forgotten)
        return removed


def default_loops(settings: Settings) -> list[Loop]:
    from beat.cron import CronLoop
    from beat.reclaim import Reclaimer
    from beat.redrive import Redrive

    tick = settings.leader_tick
    return [
        CronLoop(tick, settings.schedule_grace, settings.schedule_catchup),
        Redrive(tick),
        Stager(tick),
        Relay(tick, settings.relay_grace),
        Republisher(max(tick, 5.0), settings.republish_after),
        Rescuer(max(tick, 5.0)),
        Reclaimer(max(tick, 5.0)),
        Pruner(60.0, settings.retention_succeeded, settings.retention_failed),
    ]


@dataclass
class Runner:
    """Runs each loop when it is due; a loop that fails is logged and tried next time."""

    env: Maintenance
    loops: Sequence[Loop]
    record: bool = True
    identity: str | None = None
    _next: dict[str, float] = field(default_factory=dict)
    _runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _recorded_at: float = float("-inf")

    def tick(self) -> float:
        now = time.monotonic()
        for loop in self.loops:
            if self._next.get(loop.name, 0.0) > now:
                continue
            result: int | None = None
            error: str | None = None
            try:
                result = loop.run(self.env)
            except Exception as failure:
                log.exception("maintenance loop %s failed; it runs again next tick", loop.name)
                error = f"{type(failure).__name__}: {str(failure).strip()[:500]}"
            self._runs[loop.name] = {
                "name": loop.name,
                "interval_seconds": loop.interval,
                "last_run_at": datetime.now(UTC),
                "last_result": result,
                "last_error": error,
                "leader": self.identity,
            }
            self._next[loop.name] = time.monotonic() + loop.interval
        self._record()
        upcoming = min(self._next.values(), default=now + 1.0)
        return max(0.05, upcoming - time.monotonic())

    def _record(self) -> None:
        """Write the loops' last runs, at most every ``RECORD_EVERY`` seconds; never fails the tick."""
        if not self.record or not self._runs or time.monotonic() - self._recorded_at < RECORD_EVERY:
            return
        self._recorded_at = time.monotonic()
        try:
            with db.transaction(self.env.settings) as conn:
                maintenance_runs.record(conn, list(self._runs.values()))
        except Exception as error:
            log.warning("could not record the maintenance loops' last runs: %s", error)
            return
        self._runs.clear()
