"""Room under limits: one admission pass's view of the limits, their room per key, and the order
in which waiting jobs are taken (``jobs.ledger.admission`` admits them; docs/flow-control.md).

Reads only: ``limit_slots`` and ``limit_keys`` are written by ``jobs.ledger.admission``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from jobs.schema import jobs, limit_keys, limit_slots, limits

__all__ = ["LimitRule", "Pair", "Pass", "begin", "waiting"]

#: A limit's name and a key ('' for a limit without a key).
Pair = tuple[str, str]

_LOCK_SPACE = sa.func.hashtext("jobs.limits")


@dataclass(slots=True)
class LimitRule:
    name: str
    keyed: bool
    concurrency: int | None
    interval: float  # a rate's emission interval T (seconds); 0 for a cap
    tolerance: float  # burst * T


@dataclass(slots=True)
class Pass:
    """One admission pass: the limits it holds locks for, the room it found per pair."""

    conn: sa.Connection
    limits: dict[str, LimitRule]
    locked: set[str]
    clock: datetime
    room: dict[Pair, int]
    tat: dict[Pair, datetime]
    moved: set[Pair]
    """Pairs this pass admitted to (their ``limit_keys`` row is written by ``_mark``)."""

    def lock(self, names: Iterable[str], *, wait: bool) -> bool:
        """Take the advisory locks of ``names`` (in name order); without ``wait``, only if free."""
        for name in sorted(set(names) - self.locked):
            if wait:
                self.conn.execute(
                    sa.select(sa.func.pg_advisory_xact_lock(_LOCK_SPACE, sa.func.hashtext(name)))
                )
            elif not self.conn.execute(
                sa.select(sa.func.pg_try_advisory_xact_lock(_LOCK_SPACE, sa.func.hashtext(name)))
            ).scalar_one():
                return False
            self.locked.add(name)
        return True

    def free(self, pair: Pair) -> int:
        """Starts the pair allows now (a cap's free slots; a rate's tokens)."""
        if pair in self.room:
            return self.room[pair]
        limit = self.limits[pair[0]]
        if limit.concurrency is not None:
            used = self.conn.execute(
                sa.select(sa.func.count())
                .select_from(limit_slots.join(jobs, jobs.c.id == limit_slots.c.job_id))
                .where(
                    limit_slots.c.limit_name == pair[0],
                    limit_slots.c.key == pair[1],
                    limit_slots.c.admitted_at.is_not(None),
                    jobs.c.state.in_(("queued", "running")),
                )
            ).scalar_one()
            found = max(limit.concurrency - used, 0)
        else:
            stored = self.conn.execute(
                sa.select(limit_keys.c.tat).where(
                    limit_keys.c.limit_name == pair[0], limit_keys.c.key == pair[1]
                )
            ).scalar_one_or_none()
            tat = max(stored or self.clock, self.clock)
            self.tat[pair] = tat
            ahead = (tat - self.clock).total_seconds()
            found = (
                int((limit.tolerance - ahead) / limit.interval + 1e-9) + 1 if ahead <= limit.tolerance else 0
            )
        self.room[pair] = found
        return found

    def take(self, pair: Pair) -> None:
        self.room[pair] -= 1
        self.moved.add(pair)
        limit = self.limits[pair[0]]
        if limit.concurrency is None:
            self.tat[pair] += timedelta(seconds=limit.interval)


def begin(conn: sa.Connection) -> Pass:
    found = {}
    for row in conn.execute(sa.select(limits)).all():
        if row.concurrency is not None:
            found[row.name] = LimitRule(row.name, row.key is not None, row.concurrency, 0.0, 0.0)
        else:
            interval = row.period / row.rate
            found[row.name] = LimitRule(row.name, row.key is not None, None, interval, row.burst * interval)
    clock = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    return Pass(conn, found, set(), clock, {}, {}, set())


def waiting(run: Pass, pair: Pair, count: int) -> list[uuid.UUID]:
    """The next held jobs waiting on ``pair``, in admission order. A limit without a key serves the
    keys of the jobs' first keyed limit round-robin: each key's first job before any key's second,
    and among keys of the same rank, the one served longest ago first."""
    slot = limit_slots.alias("slot")
    base = (
        sa.select(slot.c.job_id, jobs.c.priority, slot.c.waiting_since)
        .select_from(slot)
        .join(jobs, sa.and_(jobs.c.id == slot.c.job_id, jobs.c.state == "held"))
        .where(slot.c.limit_name == pair[0], slot.c.key == pair[1], slot.c.admitted_at.is_(None))
    )
    if run.limits[pair[0]].keyed or not any(limit.keyed for limit in run.limits.values()):
        ordered = base.order_by(jobs.c.priority, slot.c.waiting_since, slot.c.job_id)
        return list(run.conn.execute(ordered.limit(count)).scalars())
    other = limit_slots.alias("other")
    keyed = limits.alias("keyed")
    fair = (
        sa.select(other.c.limit_name.label("fair_limit"), other.c.key.label("fair_key"))
        .join(keyed, sa.and_(keyed.c.name == other.c.limit_name, keyed.c.key.is_not(None)))
        .where(other.c.job_id == slot.c.job_id)
        .order_by(other.c.limit_name)
        .limit(1)
        .lateral("fair")
    )
    served = limit_keys.alias("served")
    fair_key = sa.func.coalesce(fair.c.fair_key, "")
    rank = sa.func.row_number().over(partition_by=fair_key, order_by=(jobs.c.priority, slot.c.waiting_since))
    ranked = (
        base.add_columns(rank.label("rank"), served.c.last_admitted_at.label("served_at"))
        .outerjoin(fair, sa.true())
        .outerjoin(served, sa.and_(served.c.limit_name == fair.c.fair_limit, served.c.key == fair.c.fair_key))
        .subquery()
    )
    ordered = sa.select(ranked.c.job_id).order_by(
        ranked.c.rank,
        ranked.c.served_at.asc().nulls_first(),
        ranked.c.priority,
        ranked.c.waiting_since,
        ranked.c.job_id,
    )
    return list(run.conn.execute(ordered.limit(count)).scalars())
