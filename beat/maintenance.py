"""The leader's maintenance loops. Each is a small object: a name, an interval, and ``run``.

- **stager**: publishes delayed and retrying jobs whose time has come;
- **relay**: publishes committed jobs that were never published (Redis was
  down at submit, or the producer died between commit and publish), and jobs
  a worker handed back because it lacks their kind, once a live worker has it;
- **republisher**: publishes again queued jobs that no worker took for
  ``JOBS_REPUBLISH_AFTER`` seconds (their message may be lost);
- **rescuer**: moves running jobs whose lease expired (their worker died) to
  ``retrying``, or to ``failed`` on their last attempt, and admits the jobs
  waiting for the slots they held;
- **admitter**: flow control's safety net and clock (``jobs.ledger.admission``):
  due delayed and retrying jobs under a limit become ``held``; held jobs are
  admitted as rates allow and wherever a finish's own admission lost a race;
  held jobs whose limits were removed are queued.

- **pruner**: deletes finished jobs past their retention, in bounded batches
  (failed jobs are kept longer than succeeded and cancelled ones), and workers
  gone from the roster for as long as succeeded jobs are kept.
- **cron**: fires the due slots of the schedules (``beat.cron``).
- **redrive**: notices that Redis lost its data and publishes every queued
  job again (``beat.redrive``).
- **reclaimer**: puts back on their queues the messages a lost worker had
  taken but not started (``beat.reclaim``).

More loops slot in by adding to ``default_loops``. Every loop gets the same
context (``beat.context``) and none imports another; ``beat.runner`` runs them
and records when each last ran.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from beat.context import Loop, Maintenance, publish_taken
from beat.cron import CronLoop
from beat.reclaim import Reclaimer
from beat.redrive import Redrive
from jobs import counters, db, ledger, limit_store, publisher, roster
from jobs.settings import Settings

__all__ = ["Admitter", "Pruner", "Relay", "Republisher", "Rescuer", "Stager", "default_loops"]

log = logging.getLogger("jobs.beat")

BATCH = 1000
#: The admitter's shortest wait for a rate's next token (the leader ticks at most every 0.05 s).
MIN_ADMIT_WAIT = 0.02


@dataclass
class Stager:
    interval: float
    name: str = "stager"

    def run(self, env: Maintenance) -> int:
        moved = 0
        while True:
            sent = publish_taken(env, lambda conn: ledger.stage_due(conn, limit=BATCH))
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
        sent = publish_taken(
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
        sent = publish_taken(
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
            admitted = ledger.release(conn, [job_id for job_id, _ in rescued], tally=tally)
            counters.write(conn, tally.take())  # the counts commit with the rescue
        publisher.publish_committed(env.settings, env.registry, admitted)
        for job_id, state in rescued:
            log.warning("rescuer: job %s lost its worker; now %s", job_id, state)
        return len(rescued)


@dataclass
class Admitter:
    """Flow control's tick: holds due limited jobs, admits what time (rates) or a lost race left
    waiting; every ``settle_every`` seconds, drops slot rows a crash left, queues held jobs
    whose limits were removed and counts workflow parents' ends no finish counted (the safety
    nets). It runs again when the next rate token is due (at most every
    ``interval``), so rate-limited jobs start evenly spaced, not in bursts of one round; such an
    early round admits for the rate limits only (a whole pass over every key of every limit
    comes every ``interval``)."""

    interval: float
    settle_every: float = 5.0
    name: str = "admitter"
    rounds: int = 0
    every: float = 0.0
    settled_at: float = field(default=float("-inf"))
    passed_at: float = field(default=float("-inf"))

    def __post_init__(self) -> None:
        self.every = self.interval

    def run(self, env: Maintenance) -> int:
        self.rounds += 1
        if self.rounds == 1:  # the limits kinds declare in code, when this leader starts leading
            with db.transaction(env.settings) as conn:
                changed = limit_store.sync_declared(conn, env.registry)
            if changed:
                log.info("admitter: limits declared in code written to the ledger: %s", ", ".join(changed))
        while True:
            with db.transaction(env.settings) as conn:
                held = ledger.hold_due(conn, limit=BATCH)
            if held < BATCH:
                break
        # Every ``every`` seconds a whole pass; in between, only the rates whose tokens fell due.
        whole = time.monotonic() - self.passed_at >= self.every * 0.9
        with db.transaction(env.settings) as conn:
            admitted = ledger.admit(conn, rates_only=not whole)
            if whole:
                self.passed_at = time.monotonic()
            if time.monotonic() - self.settled_at >= self.settle_every:
                self.settled_at = time.monotonic()
                ledger.settle(conn)
                admitted += ledger.admit_orphans(conn, limit=BATCH)
                admitted += ledger.settle_dependents(conn, limit=BATCH)
            wait = ledger.next_token(conn)
            limited = limit_store.exists(conn)
        if not limited:  # nothing to admit until a limit is set: the leader's usual tick will do
            self.interval = max(self.every, env.settings.leader_tick)
        else:
            self.interval = self.every if wait is None else min(self.every, max(wait, MIN_ADMIT_WAIT))
        return publisher.publish_committed(env.settings, env.registry, admitted)


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
        for _ in range(self.max_batches):  # workflows go whole, once every step is past its retention
            with db.transaction(env.settings) as conn:
                deleted = ledger.prune_workflows(
                    conn,
                    older_than=self.retention_finished,
                    failed_older_than=self.retention_failed,
                    limit=max(self.batch // 10, 1),
                )
            removed += deleted
            if deleted < max(self.batch // 10, 1):
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
    tick = settings.leader_tick
    return [
        CronLoop(tick, settings.schedule_grace, settings.schedule_catchup),
        Redrive(tick),
        Stager(tick),
        Admitter(settings.admit_interval),
        Relay(tick, settings.relay_grace),
        Republisher(max(tick, 5.0), settings.republish_after),
        Rescuer(max(tick, 5.0)),
        Reclaimer(max(tick, 5.0)),
        Pruner(60.0, settings.retention_succeeded, settings.retention_failed),
    ]
