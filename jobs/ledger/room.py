"""Room under limits: one admission pass's view of the limits, their room per key, and the order
in which waiting jobs are taken (``jobs.ledger.admission`` admits them; docs/flow-control.md).

Reads only: ``limit_slots`` and ``limit_keys`` are written by ``jobs.ledger.admission``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from jobs.schema import limit_keys, limit_slots, limits

__all__ = ["FAIR_SEPARATOR", "LimitRule", "Pair", "Pass", "begin", "waiting"]

#: A limit's name and a key ('' for a limit without a key).
Pair = tuple[str, str]

#: Between a keyed limit's name and the key in ``limit_slots.fair`` (a unit separator: a limit
#: name cannot hold it).
FAIR_SEPARATOR = "\x1f"

_LOCK_SPACE = sa.func.hashtext("jobs.limits")


@dataclass(slots=True)
class LimitRule:
    """A limit as admission applies it."""

    name: str
    keyed: bool
    concurrency: int | None
    interval: float  # a rate's emission interval T (seconds); 0 for a cap
    tolerance: float  # burst * T


@dataclass(slots=True)
class Pass:
    """One admission pass: the limits, the locks it holds, the room it found per pair."""

    conn: sa.Connection
    limits: dict[str, LimitRule]
    clock: datetime
    locked: set[str] = field(default_factory=set)
    room: dict[Pair, int] = field(default_factory=dict)
    tat: dict[Pair, datetime] = field(default_factory=dict)
    moved: set[Pair] = field(default_factory=set)
    """Pairs this pass admitted to (their ``limit_keys`` row is written by the admission)."""

    def lock(self, names: Iterable[str]) -> None:
        """Take the advisory locks of ``names``, waiting, in name order (one statement)."""
        wanted = sorted(set(names) - self.locked)
        if wanted:
            listed = sa.func.unnest(sa.bindparam(None, wanted, type_=pg.ARRAY(sa.Text))).table_valued("name")
            self.conn.execute(
                sa.select(sa.func.pg_advisory_xact_lock(_LOCK_SPACE, sa.func.hashtext(listed.c.name)))
            ).all()
            self.locked.update(wanted)

    def try_lock(self, names: Iterable[str]) -> bool:
        """Take the advisory locks of ``names`` only if no other admitter holds them."""
        for name in sorted(set(names) - self.locked):
            taken = self.conn.execute(
                sa.select(sa.func.pg_try_advisory_xact_lock(_LOCK_SPACE, sa.func.hashtext(name)))
            ).scalar_one()
            if not taken:
                return False
            self.locked.add(name)
        return True

    def free(self, pair: Pair) -> int:
        """Starts the pair allows now (a cap's free slots; a rate's tokens)."""
        if pair in self.room:
            return self.room[pair]
        limit = self.limits[pair[0]]
        if limit.concurrency is not None:
            admitted = (
                sa.select(limit_slots.c.job_id)
                .where(
                    limit_slots.c.limit_name == pair[0],
                    limit_slots.c.key == pair[1],
                    limit_slots.c.admitted_at.is_not(None),
                )
                .limit(limit.concurrency)
                .subquery()
            )
            used = self.conn.execute(sa.select(sa.func.count()).select_from(admitted)).scalar_one()
            found = limit.concurrency - used
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
        self.room[pair] = max(found, 0)
        return self.room[pair]

    def take(self, pair: Pair) -> None:
        self.room[pair] -= 1
        limit = self.limits[pair[0]]
        if limit.concurrency is None:
            self.tat[pair] += timedelta(seconds=limit.interval)
        if limit.concurrency is None or limit.keyed:  # a rate's clock; a key's turn (round-robin)
            self.moved.add(pair)


def begin(conn: sa.Connection) -> Pass:
    """A pass over the limits as they are now, on the database's clock."""
    # The limits' advisory locks last as long as the transaction: in autocommit, each statement's.
    assert conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT", (
        "admission needs a transaction"
    )
    rules = {}
    clock = None
    for row in conn.execute(sa.select(limits, sa.func.clock_timestamp().label("clock"))).all():
        clock = row.clock
        if row.concurrency is not None:
            rules[row.name] = LimitRule(row.name, row.key is not None, row.concurrency, 0.0, 0.0)
        else:
            interval = row.period / row.rate
            rules[row.name] = LimitRule(row.name, row.key is not None, None, interval, row.burst * interval)
    if clock is None:
        clock = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    return Pass(conn, rules, clock)


def waiting(run: Pass, pair: Pair, count: int) -> list[uuid.UUID]:
    """The next jobs waiting on ``pair``, in admission order: by priority, then waiting time.

    A limit without a key, when keyed limits exist, serves the keys round-robin: the first
    waiting job of each key (of the jobs' first keyed limit), the key served longest ago first.
    The caller asks again while there is room, so a key's second job follows every key's first.
    """
    if run.limits[pair[0]].keyed or not any(limit.keyed for limit in run.limits.values()):
        query = (
            sa.select(limit_slots.c.job_id)
            .where(
                limit_slots.c.limit_name == pair[0],
                limit_slots.c.key == pair[1],
                limit_slots.c.admitted_at.is_(None),
            )
            .order_by(limit_slots.c.priority, limit_slots.c.waiting_since, limit_slots.c.job_id)
            .limit(count)
        )
        return list(run.conn.execute(query).scalars())
    rows = run.conn.execute(_HEADS, {"name": pair[0], "key": pair[1], "count": count, "sep": FAIR_SEPARATOR})
    return [row.job_id for row in rows]


# The first waiting job of every fairness key: the distinct keys by a loose index scan (one index
# probe per key, not a walk over every waiting job), each key's head by the index, the key
# served longest ago first.
_HEADS = sa.text(
    """
    WITH RECURSIVE fairs(fair) AS (
        (SELECT fair FROM limit_slots
         WHERE limit_name = :name AND key = :key AND admitted_at IS NULL
         ORDER BY fair LIMIT 1)
        UNION ALL
        SELECT (SELECT s.fair FROM limit_slots s
                WHERE s.limit_name = :name AND s.key = :key AND s.admitted_at IS NULL AND s.fair > fairs.fair
                ORDER BY s.fair LIMIT 1)
        FROM fairs WHERE fairs.fair IS NOT NULL
    )
    SELECT head.job_id
    FROM fairs
    CROSS JOIN LATERAL (
        SELECT s.job_id, s.priority, s.waiting_since FROM limit_slots s
        WHERE s.limit_name = :name AND s.key = :key AND s.admitted_at IS NULL AND s.fair = fairs.fair
        ORDER BY s.priority, s.waiting_since, s.job_id LIMIT 1
    ) head
    LEFT JOIN limit_keys served
        ON fairs.fair <> ''
        AND served.limit_name = split_part(fairs.fair, :sep, 1)
        AND served.key = substr(fairs.fair, strpos(fairs.fair, :sep) + 1)
    WHERE fairs.fair IS NOT NULL
    ORDER BY served.last_admitted_at ASC NULLS FIRST, head.priority, head.waiting_since
    LIMIT :count
    """
).columns(job_id=sa.Uuid)
