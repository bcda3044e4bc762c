"""The checker run after every fault scenario (and by the soak): the platform's promises, on the ledger.

Given the jobs a scenario got accepted (ids the producer or CLI returned,
and foreign messages the platform may adopt) and those it was refused, it
reads the whole ledger and reports every broken promise:

- every accepted job has a row, in exactly one terminal state, and every
  attempt of it is closed (no attempt left open under a terminal state); one
  still unfinished (``held`` by a limit, queued, running, ...) is reported as
  unfinished, not lost: its row is there, but the scenario must end with none;
- a finished job keeps no flow-control slot (``limit_slots``): its finish freed it;
- no row exists for a job that was never accepted;
- at most one effect per key (the test kinds write effects in the job's own
  transaction), and a succeeded effect-writing job has exactly one;
- attempts never exceed ``max_attempts`` and match the attempt history;
- every failed job carries a readable error (a type and a message);
- workflows keep their promises (``tests.faults.workflow_checks``): every finished parent
  counted once, no step waiting for nothing, no step started before its parents finished, and
  each step's effect written once, by the attempt that succeeded.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobs import db
from jobs.errors import LedgerUnavailable
from jobs.schema import TERMINAL_STATES, job_attempts, jobs, limit_slots
from jobs.settings import Settings
from tests.faults.workflow_checks import workflow_problems

__all__ = ["EFFECT_KINDS", "START_KINDS", "Report", "Workload", "check", "wait_for_quiet"]

#: Kinds whose success writes exactly one row in ``test_effects`` (keyed by ``payload.key``).
EFFECT_KINDS = frozenset({"test.effect", "test.work", "test.long"})
#: Kinds that write a row in ``test_effects`` as each attempt starts (keyed by ``payload.tenant``):
#: many rows per key are their point, so the at-most-one-effect rule does not read them.
START_KINDS = frozenset({"test.tenant"})


@dataclass
class Workload:
    """What a scenario did: jobs accepted, foreign messages sent, submissions refused."""

    accepted: set[uuid.UUID] = field(default_factory=set)
    refused: set[uuid.UUID] = field(default_factory=set)
    refused_keys: set[str] = field(default_factory=set)
    since: datetime | None = None  # rows and effects older than this belong to earlier scenarios

    def accept(self, *ids: uuid.UUID) -> None:
        self.accepted.update(uuid.UUID(str(job_id)) for job_id in ids)

    def refuse(self, job_id: uuid.UUID | None = None, *, key: str | None = None) -> None:
        """A job that must leave no row: by id (a poison message) or by effect key (a refused submit)."""
        if job_id is not None:
            self.refused.add(uuid.UUID(str(job_id)))
        if key is not None:
            self.refused_keys.add(key)


@dataclass
class Report:
    accepted: int = 0
    states: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    duplicated_effects: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unfinished or self.duplicated_effects or self.problems)

    def totals(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "succeeded": self.states["succeeded"],
            "failed": self.states["failed"],
            "cancelled": self.states["cancelled"],
            "lost": len(self.lost),
            "unfinished": len(self.unfinished),
            "duplicated effects": len(self.duplicated_effects),
        }

    def describe(self) -> str:
        lines = [", ".join(f"{name}: {value}" for name, value in self.totals().items())]
        for title, items in (
            ("lost", self.lost),
            ("unfinished", self.unfinished),
            ("duplicated effects", self.duplicated_effects),
            ("problems", self.problems),
        ):
            lines += [f"{title}: {item}" for item in items[:20]]
            if len(items) > 20:
                lines.append(f"{title}: … and {len(items) - 20} more")
        return "\n".join(lines)


def _rows(settings: Settings, since: datetime | None) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any]]:
    recent = jobs.c.created_at >= since if since is not None else sa.true()
    slots = sa.select(sa.func.count()).where(limit_slots.c.job_id == jobs.c.id).scalar_subquery()
    with db.transaction(settings) as conn:
        job_rows = conn.execute(
            sa.select(
                jobs.c.id,
                jobs.c.kind,
                jobs.c.state,
                jobs.c.attempt,
                jobs.c.max_attempts,
                jobs.c.error,
                jobs.c.payload,
                slots.label("slots"),
            ).where(recent)
        ).all()
        attempt_rows = conn.execute(
            sa.select(job_attempts.c.job_id, job_attempts.c.attempt, job_attempts.c.outcome).where(
                job_attempts.c.job_id.in_(sa.select(jobs.c.id).where(recent))
            )
        ).all()
        effects = sa.table(
            "test_effects", sa.column("key"), sa.column("job_id"), sa.column("attempt"), sa.column("at")
        )
        effect_rows = conn.execute(
            sa.select(effects.c.key, effects.c.job_id, effects.c.attempt).where(
                effects.c.at >= since if since is not None else sa.true(),
                effects.c.job_id.not_in(sa.select(jobs.c.id).where(jobs.c.kind.in_(START_KINDS))),
            )
        ).all()
    return job_rows, attempt_rows, effect_rows


def wait_for_quiet(
    settings: Settings,
    workload: Workload,
    timeout: float = 60.0,
    tick: Callable[[], object] | None = None,
) -> float:
    """Wait until every accepted job is terminal (or ``timeout``); returns the seconds waited.

    ``tick`` runs on every poll (the harness's supervisor restarts processes that exited meanwhile).
    """
    started = time.monotonic()
    deadline = started + timeout
    ids = list(workload.accepted)
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        try:
            with db.transaction(settings) as conn:
                done = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(jobs)
                    .where(jobs.c.id.in_(ids), jobs.c.state.in_(TERMINAL_STATES))
                ).scalar_one()
        except LedgerUnavailable:
            done = -1
        if done == len(ids):
            break
        time.sleep(0.2)
    return time.monotonic() - started


def check(settings: Settings, workload: Workload) -> Report:
    """Read the ledger and the effects; returns every broken promise found."""
    job_rows, attempt_rows, effect_rows = _rows(settings, workload.since)
    report = Report(accepted=len(workload.accepted))
    history: dict[uuid.UUID, list[Any]] = {}
    for attempt in attempt_rows:
        history.setdefault(attempt.job_id, []).append(attempt)
    _check_accepted(report, workload, {row.id: row for row in job_rows})
    for row in job_rows:
        report.problems += _row_problems(row, workload, history.get(row.id, []))
    _check_effects(report, job_rows, Counter(effect.key for effect in effect_rows))
    with db.transaction(settings) as conn:
        report.problems += workflow_problems(conn, workload.since)
    return report


def _check_accepted(report: Report, workload: Workload, by_id: dict[uuid.UUID, Any]) -> None:
    """Every accepted job has a row (else it is lost) in a terminal state (else it is unfinished)."""
    for job_id in sorted(workload.accepted, key=str):
        row = by_id.get(job_id)
        if row is None:
            report.lost.append(f"{job_id}: accepted but has no ledger row")
        elif row.state not in TERMINAL_STATES:
            waiting = " (waiting for a limit to admit it)" if row.state == "held" else ""
            report.unfinished.append(
                f"{job_id} ({row.kind}): still {row.state}{waiting} after attempt {row.attempt}"
            )
        else:
            report.states[row.state] += 1


def _row_problems(row: Any, workload: Workload, attempts: list[Any]) -> list[str]:
    """What is wrong with one ledger row: where it came from, its attempts, its error."""
    found = []
    key = row.payload.get("key") if isinstance(row.payload, dict) else None
    name = f"{row.id} ({row.kind}, {row.state}{f', key {key}' if key else ''})"
    if row.id not in workload.accepted:
        found.append(f"{name}: a row for a job never accepted")
    if row.id in workload.refused:
        found.append(f"{name}: a refused message got a row")
    if isinstance(row.payload, dict) and row.payload.get("key") in workload.refused_keys:
        found.append(f"{name}: a refused submission got a row")
    if row.attempt > row.max_attempts:
        found.append(f"{name}: attempt {row.attempt} > max {row.max_attempts}")
    if len(attempts) != row.attempt:
        found.append(f"{name}: attempt {row.attempt} but {len(attempts)} recorded")
    if row.state in TERMINAL_STATES and any(a.outcome is None for a in attempts):
        found.append(f"{name}: an attempt is still open")
    if row.state in TERMINAL_STATES and row.slots:
        found.append(f"{name}: finished, but still holds {row.slots} limit slot(s)")
    if row.state == "failed" and not _readable(row.error):
        found.append(f"{name}: no readable error: {row.error!r}")
    return found


def _check_effects(report: Report, job_rows: Sequence[Any], per_key: Counter[str]) -> None:
    """At most one effect per key; exactly one for a succeeded effect job, none for the others."""
    report.duplicated_effects += [f"key {key!r}: {n} effects" for key, n in per_key.items() if n > 1]
    for row in job_rows:
        if row.kind in EFFECT_KINDS and isinstance(row.payload, dict):
            count = per_key.get(str(row.payload.get("key")), 0)
            if row.state == "succeeded" and count != 1:
                report.problems.append(f"{row.id} ({row.kind}): succeeded with {count} effects")
            if row.state != "succeeded" and count:
                report.problems.append(f"{row.id} ({row.kind}): {row.state} but its effect was kept")


def _readable(error: Any) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("type"), str)
        and isinstance(error.get("message"), str)
        and bool(error["message"].strip())
    )
