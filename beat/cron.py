"""The leader's cron loop: fires the due slots of every enabled schedule (``docs/scheduling.md``).

Every tick it reads the enabled schedules, so a change made while beat runs
applies within one tick. For each schedule it works out the due slots by the
misfire policy (``jobs.schedules.policies.plan``) and fires them in one
transaction: lock the schedule's row, apply the overlap policy, insert each
job (or workflow) with its (schedule, slot) pair, which is unique in the
ledger (``ON CONFLICT DO NOTHING``: a slot that another leader already fired
is passed over), and move the schedule's ``handled_until`` forward. The jobs
(a workflow's first steps) are published after the commit, or by the relay
if Redis is down. The statements on the ``schedules`` table are the store's
(``jobs.schedules.store``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobs import db
from jobs.errors import BadInput, LedgerUnavailable
from jobs.producer import JobId, Producer
from jobs.schedules import (
    Plan,
    ScheduleSpec,
    busy_firing,
    fire,
    fired_by,
    overlap,
    plan,
    store,
    timing_of,
)
from jobs.workflows import WorkflowId

if TYPE_CHECKING:
    from beat.context import Maintenance

__all__ = ["CronLoop"]

log = logging.getLogger("jobs.beat")


@dataclass
class CronLoop:
    """The cron loop; ``declared`` defaults to ``beat.declared.SCHEDULES``, synced on the first run."""

    interval: float
    grace: float
    catchup: float
    declared: Sequence[ScheduleSpec] | None = None
    limit: int = 100
    name: str = "cron"
    _producer: Producer | None = field(default=None, repr=False)
    _synced: bool = field(default=False, repr=False)

    def run(self, env: Maintenance) -> int:
        if not self._synced:
            self.sync(env)
        with db.transaction(env.settings) as conn:
            now, rows = store.read_enabled(conn)
        fired = 0
        for row in rows:
            try:
                if self._has_work(row, now):
                    fired += self.fire(env, row.name, now)
            except BadInput as error:  # e.g. a time zone this machine does not know
                log.error("schedule %s cannot fire: %s", row.name, error.message)
            except LedgerUnavailable:
                raise  # no schedule can fire; the runner logs it and tries again next tick
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule %s: firing failed; it is tried again next tick", row.name)
        return fired

    def sync(self, env: Maintenance) -> list[str]:
        """Bring the code-declared schedules into the table (once per process, when it first leads)."""
        declared = self.declared
        if declared is None:
            from beat.declared import SCHEDULES

            declared = SCHEDULES
        report = store.sync_declared(env.settings, env.registry, declared)
        self._synced = True
        return report

    def _has_work(self, row: Any, now: datetime) -> bool:
        decided = self._plan(row, now)
        return bool(decided.fire) or decided.handled_until > row.handled_until

    def _plan(self, row: Any, now: datetime) -> Plan:
        return plan(
            timing_of(row),
            handled_until=row.handled_until,
            now=now,
            misfire=row.misfire,
            grace=self.grace,
            catchup=self.catchup,
            limit=self.limit,
        )

    def producer(self, env: Maintenance) -> Producer:
        if self._producer is None:
            self._producer = Producer(env.settings, registry=env.registry)
        return self._producer

    def fire(self, env: Maintenance, name: str, now: datetime) -> int:
        """Fire one schedule's due slots as of ``now``; returns how many jobs it made."""
        settings = env.settings
        producer = self.producer(env)
        with db.ledger_errors(settings.database_url), db.session(settings) as session, session.begin():
            conn = session.connection()
            row = store.lock_enabled(conn, name)
            if row is None:  # paused or removed since the tick read it
                return 0
            decided = self._plan(row, now)
            if not decided.fire and decided.handled_until <= row.handled_until:
                return 0  # another leader got here first
            busy = busy_firing(conn, name) if row.overlap == "skip" and decided.fire else None
            slots, overlapped = overlap(row.overlap, decided.fire, busy is not None)
            fired: list[tuple[datetime, JobId | WorkflowId]] = []
            error: str | None = None
            what = "job" if row.workflow is None else "workflow"
            for slot in slots:
                try:
                    job = fire(producer, session, row, slot, submitted_by=fired_by(name))
                except BadInput as failure:  # a kind, its model or a step's changed since it was saved
                    log.error("schedule %s cannot fire slot %s: %s", name, slot.isoformat(), failure.message)
                    error = f"slot {slot.isoformat()}: {failure.message}"
                    break
                if isinstance(job, JobId) and job.duplicate and job.reason in ("unique", "debounce"):
                    how = "collapsed into" if job.reason == "unique" else "debounced into"
                    log.info(
                        "schedule %s: slot %s %s job %s (the kind's %s)",
                        name,
                        slot.isoformat(),
                        how,
                        job,
                        "unique window" if job.reason == "unique" else "debounce",
                    )
                elif job.duplicate:
                    log.info(
                        "schedule %s: slot %s was already fired as %s %s", name, slot.isoformat(), what, job
                    )
                else:
                    log.info("schedule %s fired slot %s as %s %s", name, slot.isoformat(), what, job)
                    fired.append((slot, job))
            reasons = []
            if decided.missed:
                reasons.append(f"misfire={row.misfire}: {decided.missed} missed slot(s) not fired")
            if overlapped:
                why = busy or "only the newest due slot runs"
                reasons.append(f"overlap=skip: {overlapped} slot(s) not fired ({why})")
            if reasons:
                log.warning("schedule %s: %s", name, "; ".join(reasons))
            done = store.FiringRound(
                handled_until=decided.handled_until,
                fired=fired[-1] if fired else None,
                error=error,
                skip_reason="; ".join(reasons) if reasons else None,
                skipped=decided.missed + overlapped,
            )
            store.record_round(conn, name, done)
        return len(fired)
