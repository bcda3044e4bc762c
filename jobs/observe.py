"""What the ledger says about the platform right now: the queries behind the operators' views.

``jobs top``, ``jobs queues``, ``jobs explain``, ``jobs doctor`` and the
Prometheus exporter all read the ledger through these functions, so a number
means the same thing everywhere. Each function takes an open connection and
runs one or two statements; none writes.

A queued job has been *waiting since* it could first run: when it was
submitted, or when its delay or retry backoff ended (``not_before``).
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobs.schema import TERMINAL_STATES, job_attempts, jobs

__all__ = [
    "WINDOW",
    "Failure",
    "KindActivity",
    "QueueStats",
    "Running",
    "ahead_of",
    "attempt_outcomes",
    "kind_activity",
    "queue_stats",
    "queued_by_kind",
    "recent_failures",
    "running_jobs",
    "span",
]

#: The window of "recent" throughput and failures, seconds.
WINDOW = 60.0

LIVE_STATES = ("scheduled", "held", "queued", "running", "retrying")

_waiting_since = sa.func.greatest(jobs.c.created_at, sa.func.coalesce(jobs.c.not_before, jobs.c.created_at))


def span(seconds: float) -> str:
    """A duration as operators read it, in a few characters: ``42s``, ``3m05s``, ``2h10m``, ``3d04h``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _ago(seconds: float) -> sa.ColumnElement[datetime]:
    return sa.func.now() - sa.bindparam(None, timedelta(seconds=seconds), type_=sa.Interval)


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue as the ledger sees it."""

    queue: str
    states: dict[str, int]
    oldest_waiting: float | None
    """Seconds the longest-waiting queued job has waited, if any job is queued."""
    succeeded_recently: int
    failed_recently: int
    unpublished: int = 0
    """Queued jobs whose message is not on the broker: the relay publishes them (Redis was down, or a
    worker that lacks their kind handed them back and none that has it runs yet)."""

    @property
    def queued(self) -> int:
        return self.states.get("queued", 0)

    @property
    def running(self) -> int:
        return self.states.get("running", 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "states": dict(self.states),
            "oldest_waiting_seconds": self.oldest_waiting,
            "succeeded_last_window": self.succeeded_recently,
            "failed_last_window": self.failed_recently,
            "queued_not_on_broker": self.unpublished,
        }


def queue_stats(conn: sa.Connection, *, window: float = WINDOW) -> dict[str, QueueStats]:
    """Every queue with live jobs or jobs finished within ``window`` seconds, by name."""
    live = conn.execute(
        sa.select(
            jobs.c.queue,
            jobs.c.state,
            sa.func.count(),
            sa.func.extract("epoch", sa.func.now() - sa.func.min(_waiting_since)),
            sa.func.count().filter(jobs.c.published_at.is_(None)),
        )
        .where(jobs.c.state.in_(LIVE_STATES))
        .group_by(jobs.c.queue, jobs.c.state)
    ).all()
    finished = conn.execute(
        sa.select(jobs.c.queue, jobs.c.state, sa.func.count())
        .where(jobs.c.state.in_(("succeeded", "failed")), jobs.c.finished_at >= _ago(window))
        .group_by(jobs.c.queue, jobs.c.state)
    ).all()
    states: dict[str, dict[str, int]] = {}
    oldest: dict[str, float] = {}
    unpublished: dict[str, int] = {}
    done: dict[tuple[str, str], int] = {}
    for queue, state, count, age, not_sent in live:
        states.setdefault(queue, {})[state] = int(count)
        if state == "queued":
            oldest[queue] = max(0.0, float(age))
            unpublished[queue] = int(not_sent)
    for queue, state, count in finished:
        states.setdefault(queue, {})
        done[queue, state] = int(count)
    return {
        queue: QueueStats(
            queue=queue,
            states=states[queue],
            oldest_waiting=oldest.get(queue),
            succeeded_recently=done.get((queue, "succeeded"), 0),
            failed_recently=done.get((queue, "failed"), 0),
            unpublished=unpublished.get(queue, 0),
        )
        for queue in sorted(states)
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Running:
    """A job a worker holds now."""

    id: uuid.UUID
    kind: str
    queue: str
    worker: str | None
    attempt: int
    runtime: float
    lease_left: float | None
    """Seconds until its lease expires (negative: expired, the worker is presumed lost)."""
    progress: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "id": str(self.id)}


def running_jobs(conn: sa.Connection, *, limit: int = 100) -> list[Running]:
    """Running jobs, longest-running first."""
    rows = conn.execute(
        sa.select(
            jobs.c.id,
            jobs.c.kind,
            jobs.c.queue,
            jobs.c.worker,
            jobs.c.attempt,
            sa.func.extract("epoch", sa.func.now() - jobs.c.started_at),
            sa.func.extract("epoch", jobs.c.lease_until - sa.func.now()),
            jobs.c.progress,
        )
        .where(jobs.c.state == "running")
        .order_by(jobs.c.started_at)
        .limit(limit)
    ).all()
    return [
        Running(
            id=row[0],
            kind=row[1],
            queue=row[2],
            worker=row[3],
            attempt=int(row[4]),
            runtime=max(0.0, float(row[5] or 0)),
            lease_left=None if row[6] is None else float(row[6]),
            progress=row[7],
        )
        for row in rows
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """A job that failed, most recent first."""

    id: uuid.UUID
    kind: str
    queue: str
    attempt: int
    finished_at: datetime
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "id": str(self.id)}


def recent_failures(conn: sa.Connection, *, limit: int = 10, window: float = 3600.0) -> list[Failure]:
    """The last ``limit`` jobs that failed within ``window`` seconds."""
    rows = conn.execute(
        sa.select(
            jobs.c.id,
            jobs.c.kind,
            jobs.c.queue,
            jobs.c.attempt,
            jobs.c.finished_at,
            jobs.c.error["type"].astext,
            jobs.c.error["message"].astext,
        )
        .where(jobs.c.state == "failed", jobs.c.finished_at >= _ago(window))
        .order_by(jobs.c.finished_at.desc())
        .limit(limit)
    ).all()
    return [
        Failure(
            id=row[0],
            kind=row[1],
            queue=row[2],
            attempt=int(row[3]),
            finished_at=row[4],
            error=": ".join(part for part in (row[5], row[6]) if part) or "-",
        )
        for row in rows
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class KindActivity:
    """Jobs of one kind that finished within the window, and the attempts they took."""

    kind: str
    succeeded: int
    failed: int
    cancelled: int


def kind_activity(conn: sa.Connection, *, window: float = WINDOW) -> list[KindActivity]:
    """Per kind, how many jobs reached each terminal state within ``window`` seconds."""
    rows = conn.execute(
        sa.select(jobs.c.kind, jobs.c.state, sa.func.count())
        .where(jobs.c.state.in_(TERMINAL_STATES), jobs.c.finished_at >= _ago(window))
        .group_by(jobs.c.kind, jobs.c.state)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for kind, state, count in rows:
        counts.setdefault(kind, {})[state] = int(count)
    return [
        KindActivity(kind, by.get("succeeded", 0), by.get("failed", 0), by.get("cancelled", 0))
        for kind, by in sorted(counts.items())
    ]


def attempt_outcomes(conn: sa.Connection, *, window: float = WINDOW) -> dict[tuple[str, str], int]:
    """Attempts that ended within ``window`` seconds, by (kind, outcome)."""
    rows = conn.execute(
        sa.select(jobs.c.kind, job_attempts.c.outcome, sa.func.count())
        .select_from(job_attempts.join(jobs, jobs.c.id == job_attempts.c.job_id))
        .where(job_attempts.c.finished_at >= _ago(window))
        .group_by(jobs.c.kind, job_attempts.c.outcome)
    ).all()
    return {(kind, outcome): int(count) for kind, outcome, count in rows}


def queued_by_kind(conn: sa.Connection) -> dict[tuple[str, str], int]:
    """Queued jobs by (kind, queue)."""
    rows = conn.execute(
        sa.select(jobs.c.kind, jobs.c.queue, sa.func.count())
        .where(jobs.c.state == "queued")
        .group_by(jobs.c.kind, jobs.c.queue)
    ).all()
    return {(kind, queue): int(count) for kind, queue, count in rows}


def ahead_of(conn: sa.Connection, job_id: uuid.UUID) -> int:
    """Queued jobs of the same queue that a worker takes before this one (priority, then age)."""
    me = (
        sa.select(jobs.c.queue, jobs.c.priority, _waiting_since.label("since"))
        .where(jobs.c.id == job_id)
        .cte()
    )
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(jobs.join(me, jobs.c.queue == me.c.queue))
            .where(
                jobs.c.state == "queued",
                jobs.c.id != job_id,
                sa.or_(
                    jobs.c.priority < me.c.priority,
                    sa.and_(jobs.c.priority == me.c.priority, _waiting_since < me.c.since),
                ),
            )
        ).scalar_one()
    )
