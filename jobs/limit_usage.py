"""How full each limit is, per key: the queries behind ``jobs limits``, ``top``, ``explain`` and the metrics.

For one (limit, key), from its ``limit_slots`` rows and their jobs:

- **running**: admitted rows whose job is ``queued`` or ``running`` (what a concurrency cap counts);
- **waiting**: rows not admitted yet whose job is ``held``;
- **oldest start**: the earliest ``started_at`` of its running jobs;
- **admitted in the period** (a rate limit): rows admitted within the last period; a job's row
  goes when it finishes, so this counts the unfinished ones only (a lower bound);
- for a rate limit, ``limit_keys``' GCRA state: ``tat`` (the next start is due at
  ``tat - burst * period / rate``) and the last admission.

Reads only; each function takes an open connection. A limit with many keys is bounded: the ``top``
busiest keys (waiting + running) come one by one and the rest as one aggregate row (``key`` None).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobs import limit_store
from jobs.limit_store import LimitRow
from jobs.schema import jobs, limit_keys, limit_slots, limits

__all__ = ["OTHER", "KeyUsage", "Wait", "busiest", "usage", "waits_of"]

#: How the aggregate of the keys beyond the top ones is labelled (metrics, tables).
OTHER = "other"

_ADMITTED = limit_slots.c.admitted_at.is_not(None)
_IN_FLIGHT = sa.and_(_ADMITTED, jobs.c.state.in_(("queued", "running")))
_WAITING = sa.and_(limit_slots.c.admitted_at.is_(None), jobs.c.state == "held")
_PERIOD = sa.func.make_interval(0, 0, 0, 0, 0, 0, limits.c.period)


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """One key of one limit now (``key`` '' for a limit without a key, None for the aggregate of
    the keys beyond the busiest ones, ``keys`` of them)."""

    limit: str
    key: str | None
    running: int
    waiting: int
    oldest_started_at: datetime | None
    admitted_in_period: int
    tat: datetime | None = None
    last_admitted_at: datetime | None = None
    keys: int = 1

    @property
    def label(self) -> str:
        """The key as a metric label and a table cell: the key, '' or ``other``."""
        return OTHER if self.key is None else self.key

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "keys": self.keys,
            "running": self.running,
            "waiting": self.waiting,
            "oldest_started_at": self.oldest_started_at,
            "admitted_in_period": self.admitted_in_period,
            "tat": self.tat,
            "last_admitted_at": self.last_admitted_at,
        }


def _per_key(name: str | None) -> sa.Select[Any]:
    busy = sa.func.count().filter(_IN_FLIGHT)
    waiting = sa.func.count().filter(_WAITING)
    query = (
        sa.select(
            limit_slots.c.limit_name,
            limit_slots.c.key,
            busy.label("running"),
            waiting.label("waiting"),
            sa.func.min(jobs.c.started_at).filter(_ADMITTED, jobs.c.state == "running").label("oldest"),
            sa.func.count()
            .filter(limits.c.rate.is_not(None), limit_slots.c.admitted_at > sa.func.now() - _PERIOD)
            .label("recent"),
            sa.func.row_number()
            .over(
                partition_by=limit_slots.c.limit_name, order_by=((busy + waiting).desc(), limit_slots.c.key)
            )
            .label("rank"),
        )
        .select_from(
            limit_slots.join(jobs, jobs.c.id == limit_slots.c.job_id).join(
                limits, limits.c.name == limit_slots.c.limit_name
            )
        )
        .group_by(limit_slots.c.limit_name, limit_slots.c.key)
    )
    return query if name is None else query.where(limit_slots.c.limit_name == name)


def usage(conn: sa.Connection, name: str | None = None, *, top: int = 20) -> dict[str, list[KeyUsage]]:
    """Per limit (every one, or ``name``), its ``top`` busiest keys and an aggregate of the rest.

    Only keys with unfinished jobs appear; limits without any map to an empty list.
    """
    ranked = _per_key(name).cte("ranked")
    rows = conn.execute(
        sa.select(ranked, limit_keys.c.tat, limit_keys.c.last_admitted_at)
        .outerjoin(
            limit_keys,
            sa.and_(limit_keys.c.limit_name == ranked.c.limit_name, limit_keys.c.key == ranked.c.key),
        )
        .where(ranked.c.rank <= top)
        .order_by(ranked.c.limit_name, ranked.c.rank)
    ).all()
    rest = conn.execute(
        sa.select(
            ranked.c.limit_name,
            sa.func.count(),
            sa.func.sum(ranked.c.running),
            sa.func.sum(ranked.c.waiting),
            sa.func.min(ranked.c.oldest),
            sa.func.sum(ranked.c.recent),
        )
        .where(ranked.c.rank > top)
        .group_by(ranked.c.limit_name)
    ).all()
    names = (
        sa.select(limits.c.name) if name is None else sa.select(limits.c.name).where(limits.c.name == name)
    )
    found: dict[str, list[KeyUsage]] = {limit: [] for limit in conn.execute(names).scalars()}
    for row in rows:
        found.setdefault(row.limit_name, []).append(
            KeyUsage(
                limit=row.limit_name,
                key=row.key,
                running=int(row.running),
                waiting=int(row.waiting),
                oldest_started_at=row.oldest,
                admitted_in_period=int(row.recent),
                tat=row.tat,
                last_admitted_at=row.last_admitted_at,
            )
        )
    for limit, keys, running, waiting, oldest, recent in rest:
        found.setdefault(limit, []).append(
            KeyUsage(limit, None, int(running), int(waiting), oldest, int(recent), keys=int(keys))
        )
    return found


def busiest(conn: sa.Connection, *, count: int = 10) -> list[tuple[LimitRow, KeyUsage]]:
    """The ``count`` busiest keys over every limit (waiting + running, most first), each with its
    limit: what ``jobs top`` shows."""
    rows = {row.name: row for row in limit_store.list_limits(conn)}
    found = [
        (rows[key.limit], key)
        for keys in usage(conn, top=count).values()
        for key in keys
        if key.limit in rows and key.key is not None and (key.running or key.waiting)
    ]
    found.sort(key=lambda pair: (-(pair[1].waiting + pair[1].running), pair[0].name, pair[1].label))
    return found[:count]


@dataclass(frozen=True, slots=True)
class Wait:
    """One limit a job waits for, or was admitted by, with how full its key is now."""

    limit: LimitRow
    key: str
    waiting_since: datetime
    admitted_at: datetime | None
    running: int
    waiting: int
    ahead: int
    """Jobs held for the same limit and key that have waited longer."""
    oldest_started_at: datetime | None
    tat: datetime | None
    last_admitted_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit.name,
            "definition": self.limit.describe(),
            "target": self.limit.target,
            "key": self.key,
            "waiting_since": self.waiting_since,
            "admitted_at": self.admitted_at,
            "running": self.running,
            "waiting": self.waiting,
            "ahead": self.ahead,
            "oldest_started_at": self.oldest_started_at,
            "tat": self.tat,
            "last_admitted_at": self.last_admitted_at,
        }


def waits_of(conn: sa.Connection, job_id: uuid.UUID) -> list[Wait]:
    """The limits a job has slots for, by name: what ``jobs explain`` says of a held job."""
    mine = conn.execute(
        sa.select(
            limits,
            limit_slots.c.key.label("slot_key"),
            limit_slots.c.waiting_since,
            limit_slots.c.admitted_at,
        )
        .select_from(limit_slots.join(limits, limits.c.name == limit_slots.c.limit_name))
        .where(limit_slots.c.job_id == job_id)
        .order_by(limits.c.name)
    ).all()
    found = []
    for row in mine:
        same = sa.and_(limit_slots.c.limit_name == row.name, limit_slots.c.key == row.slot_key)
        earlier = sa.or_(
            limit_slots.c.waiting_since < row.waiting_since,
            sa.and_(limit_slots.c.waiting_since == row.waiting_since, limit_slots.c.job_id < job_id),
        )
        stats = conn.execute(
            sa.select(
                sa.func.count().filter(_IN_FLIGHT),
                sa.func.count().filter(_WAITING),
                sa.func.count().filter(_WAITING, earlier),
                sa.func.min(jobs.c.started_at).filter(_ADMITTED, jobs.c.state == "running"),
            )
            .select_from(limit_slots.join(jobs, jobs.c.id == limit_slots.c.job_id))
            .where(same)
        ).one()
        state = conn.execute(
            sa.select(limit_keys.c.tat, limit_keys.c.last_admitted_at).where(
                limit_keys.c.limit_name == row.name, limit_keys.c.key == row.slot_key
            )
        ).first()
        found.append(
            Wait(
                limit=LimitRow.from_row(row),
                key=row.slot_key,
                waiting_since=row.waiting_since,
                admitted_at=row.admitted_at,
                running=int(stats[0]),
                waiting=int(stats[1]),
                ahead=int(stats[2]),
                oldest_started_at=stats[3],
                tat=state.tat if state else None,
                last_admitted_at=state.last_admitted_at if state else None,
            )
        )
    return found
