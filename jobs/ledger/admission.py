"""Held jobs and their admission: flow control's half of the ledger (docs/flow-control.md).

A job under a limit (``jobs.limits``) is created ``held``: it waits in the ledger, never on the
broker, with one ``limit_slots`` row per limit that applies to it (``hold``). It is admitted
(``held --admit--> queued``, marked published, sent after commit by the caller) when every one
of its limits has room:

- a **concurrency** cap's usage is derived from rows: the admitted slots of the limit and key
  whose job is ``queued`` or ``running``. A finish, a retry, a cancel or a rescue frees the slot
  by the job's state alone, in its own transaction;
- a **rate**'s state is GCRA's theoretical arrival time per key (``limit_keys.tat``): emission
  interval ``T = period / rate``, tolerance ``burst * T``; a start is allowed while
  ``tat - tolerance <= now``, and each moves ``tat`` on by ``T``. So in any window of one
  period at most ``rate + burst`` jobs are admitted.

Admission runs in the transaction that frees room: at submit (``admit_jobs``), in every finish
of a limited job (``release``), and on the leader's tick for what time frees (rates) or a lost
race left (``admit``). Every admission of a limit takes the limit's advisory transaction lock
(blocking, in name order, so two admitters never deadlock; a candidate that needs another
limit too takes that one only if it is free, else waits for the next pass): two workers, two
leaders or a submitter never admit past a cap together.

Fairness: within a key, jobs go by priority, then by how long they waited. A limit without a
key serves the keys of the kind's keyed limit round-robin (the first waiting job of every key,
then the second of every key, ...), so a key with 10,000 waiting jobs does not delay one with 10.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.ledger.publishing import Published
from jobs.ledger.statements import any_id, now
from jobs.schema import jobs, limit_keys, limit_slots, limits
from jobs.states import TERMINAL_STATES

__all__ = [
    "Pair",
    "admit",
    "admit_jobs",
    "admit_orphans",
    "applies",
    "forget_targets",
    "hold",
    "hold_due",
    "release",
]

#: A limit's name and a key ('' for a limit without a key).
Pair = tuple[str, str]

_LOCK_SPACE = sa.func.hashtext("jobs.limits")
_PUBLISH_COLUMNS = (jobs.c.id, jobs.c.kind, jobs.c.queue, jobs.c.priority, jobs.c.payload)

#: Seconds a process trusts its list of limited kinds and queues (``applies``): a limit set at
#: runtime holds new submissions within this time.
TARGETS_TTL = 1.0
_targets: tuple[float, frozenset[str], frozenset[str]] = (-1e9, frozenset(), frozenset())


def applies(conn: sa.Connection, kind: str, queue: str) -> bool:
    """Whether a limit applies to jobs of ``kind`` on ``queue`` (the ledger's list, cached for
    ``TARGETS_TTL`` seconds per process: submitting unlimited kinds costs no extra statement)."""
    global _targets  # noqa: PLW0603 - one small per-process cache
    stamp, kinds, queues = _targets
    if time.monotonic() - stamp > TARGETS_TTL:
        rows = conn.execute(sa.select(limits.c.kind, limits.c.queue)).all()
        kinds = frozenset(row.kind for row in rows if row.kind is not None)
        queues = frozenset(row.queue for row in rows if row.queue is not None)
        _targets = (time.monotonic(), kinds, queues)
    return kind in kinds or queue in queues


def forget_targets() -> None:
    """Read the list of limited kinds and queues again on the next ``applies`` (tests, the CLI)."""
    global _targets  # noqa: PLW0603
    _targets = (-1e9, frozenset(), frozenset())


def _applicable(ids_filter: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """(job, limit, key) for every limit that applies to the selected jobs; the key is the
    payload's value at the limit's field path as text ('' when missing or without a key)."""
    key = sa.func.coalesce(jobs.c.payload.op("#>>")(limits.c.key), "")
    return (
        sa.select(jobs.c.id, limits.c.name, key)
        .select_from(jobs)
        .join(limits, sa.or_(limits.c.kind == jobs.c.kind, limits.c.queue == jobs.c.queue))
        .where(ids_filter)
    )


def hold(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> None:
    """Give new jobs (created ``held``, or ``scheduled`` when delayed) their slot rows."""
    if not ids:
        return
    _add_slots(conn, any_id(ids))


def _add_slots(conn: sa.Connection, which: sa.ColumnElement[bool]) -> None:
    inserted = (
        pg_insert(limit_slots)
        .from_select(["job_id", "limit_name", "key"], _applicable(which))
        .on_conflict_do_nothing()
        .returning(limit_slots.c.job_id)
        .cte("inserted")
    )
    conn.execute(
        sa.update(jobs)
        .where(jobs.c.id.in_(sa.select(inserted.c.job_id)), jobs.c.limited.is_(False))
        .values(limited=True)
    )


def hold_due(conn: sa.Connection, *, limit: int = 1000) -> int:
    """Due ``scheduled`` and ``retrying`` jobs under a limit become ``held`` instead of queued:
    their slots are (re)opened for admission, new limits included. Returns how many."""
    under_limit = sa.or_(
        jobs.c.limited.is_(True),
        sa.exists().where(sa.or_(limits.c.kind == jobs.c.kind, limits.c.queue == jobs.c.queue)),
    )
    due = (
        sa.select(jobs.c.id)
        .where(jobs.c.state.in_(("scheduled", "retrying")), jobs.c.not_before <= now(), under_limit)
        .order_by(jobs.c.not_before)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(conn.execute(due).scalars())
    if not ids:
        return 0
    _add_slots(conn, any_id(ids))
    conn.execute(
        sa.update(limit_slots)
        .where(limit_slots.c.job_id == sa.any_(sa.bindparam(None, ids, type_=pg.ARRAY(sa.Uuid))))
        .values(admitted_at=None)
    )
    conn.execute(sa.update(jobs).where(any_id(ids)).values(state="held", limited=True, published_at=None))
    return len(ids)


def release(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> list[Published]:
    """After these jobs finished, were retried, cancelled or rescued (in this transaction): drop
    the slot rows of those now finished, and admit the next waiting jobs of their limits' keys."""
    if not ids:
        return []
    rows = conn.execute(
        sa.select(limit_slots.c.limit_name, limit_slots.c.key).where(
            limit_slots.c.job_id == sa.any_(sa.bindparam(None, list(ids), type_=pg.ARRAY(sa.Uuid)))
        )
    ).all()
    if not rows:
        return []
    finished = sa.select(jobs.c.id).where(any_id(ids), jobs.c.state.in_(TERMINAL_STATES))
    conn.execute(sa.delete(limit_slots).where(limit_slots.c.job_id.in_(finished)))
    return admit(conn, pairs={(row.limit_name, row.key) for row in rows})


@dataclass(slots=True)
class _Limit:
    name: str
    keyed: bool
    concurrency: int | None
    interval: float  # a rate's emission interval T (seconds); 0 for a cap
    tolerance: float  # burst * T


@dataclass(slots=True)
class _Pass:
    """One admission pass: the limits it holds locks for, the room it found per pair."""

    conn: sa.Connection
    limits: dict[str, _Limit]
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


def _begin(conn: sa.Connection) -> _Pass:
    found = {}
    for row in conn.execute(sa.select(limits)).all():
        if row.concurrency is not None:
            found[row.name] = _Limit(row.name, row.key is not None, row.concurrency, 0.0, 0.0)
        else:
            interval = row.period / row.rate
            found[row.name] = _Limit(row.name, row.key is not None, None, interval, row.burst * interval)
    clock = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    return _Pass(conn, found, set(), clock, {}, {}, set())


def admit_jobs(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> list[Published]:
    """Admit these held jobs (just submitted) if their limits have room, in this order."""
    if not ids:
        return []
    run = _begin(conn)
    names = conn.execute(
        sa.select(limit_slots.c.limit_name)
        .where(limit_slots.c.job_id == sa.any_(sa.bindparam(None, list(ids), type_=pg.ARRAY(sa.Uuid))))
        .distinct()
    ).scalars()
    run.lock(names, wait=True)
    return _admit(run, list(ids))


def admit(
    conn: sa.Connection, *, pairs: Iterable[Pair] | None = None, names: Iterable[str] | None = None
) -> list[Published]:
    """Admit waiting jobs of these limit keys (``pairs``), of every key of ``names``, or of every
    limit when neither is given: as many as every limit of each job allows, fairly."""
    run = _begin(conn)
    if not run.limits:
        return []
    if pairs is not None:
        wanted = sorted({pair for pair in pairs if pair[0] in run.limits})
    else:
        chosen = sorted(run.limits if names is None else set(names) & set(run.limits))
        run.lock(chosen, wait=True)
        wanted = [
            (row.limit_name, row.key)
            for row in conn.execute(
                sa.select(limit_slots.c.limit_name, limit_slots.c.key)
                .where(limit_slots.c.limit_name.in_(chosen), limit_slots.c.admitted_at.is_(None))
                .distinct()
            )
        ]
    run.lock((name for name, _ in wanted), wait=True)
    admitted: list[Published] = []
    for pair in wanted:
        room = run.free(pair)
        if room <= 0:
            continue
        candidates = _waiting(run, pair, room * 2 + 8)
        admitted += _admit(run, candidates)
    return admitted


def _waiting(run: _Pass, pair: Pair, count: int) -> list[uuid.UUID]:
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


def _admit(run: _Pass, candidates: list[uuid.UUID]) -> list[Published]:
    """Admit each candidate whose every waiting slot has room; returns them to publish."""
    if not candidates:
        return []
    # A held job a cancel has locked (the cancel then waits for this limit's lock) waits for the next
    # pass: waiting for its row here would deadlock with that cancel.
    lockable = sa.select(jobs.c.id).where(any_id(candidates), jobs.c.state == "held")
    unlocked = set(run.conn.execute(lockable.with_for_update(skip_locked=True)).scalars())
    candidates = [job_id for job_id in candidates if job_id in unlocked]
    slots: dict[uuid.UUID, list[Pair]] = {job_id: [] for job_id in candidates}
    for row in run.conn.execute(
        sa.select(limit_slots.c.job_id, limit_slots.c.limit_name, limit_slots.c.key).where(
            limit_slots.c.job_id == sa.any_(sa.bindparam(None, candidates, type_=pg.ARRAY(sa.Uuid))),
            limit_slots.c.admitted_at.is_(None),
        )
    ):
        slots[row.job_id].append((row.limit_name, row.key))
    chosen: list[uuid.UUID] = []
    for job_id in candidates:
        pairs = [pair for pair in slots[job_id] if pair[0] in run.limits]
        if not run.lock((name for name, _ in pairs), wait=False):
            continue  # another admitter holds one of its limits: the next pass takes it
        if all(run.free(pair) > 0 for pair in pairs):
            for pair in pairs:
                run.take(pair)
            chosen.append(job_id)
    if not chosen:
        return []
    return _mark(run, chosen)


def _mark(run: _Pass, chosen: list[uuid.UUID]) -> list[Published]:
    conn = run.conn
    conn.execute(
        sa.update(limit_slots)
        .where(
            limit_slots.c.job_id == sa.any_(sa.bindparam(None, chosen, type_=pg.ARRAY(sa.Uuid))),
            limit_slots.c.admitted_at.is_(None),
        )
        .values(admitted_at=run.clock)
    )
    for pair in sorted(run.moved):
        statement = pg_insert(limit_keys).values(
            limit_name=pair[0], key=pair[1], tat=run.tat.get(pair), last_admitted_at=run.clock
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[limit_keys.c.limit_name, limit_keys.c.key],
                set_={"tat": statement.excluded.tat, "last_admitted_at": statement.excluded.last_admitted_at},
            )
        )
    run.moved.clear()
    rows = conn.execute(
        sa.update(jobs)
        .where(any_id(chosen), jobs.c.state == "held")
        .values(state="queued", published_at=now())
        .returning(*_PUBLISH_COLUMNS)
    ).all()
    return [Published(*row) for row in rows]


def admit_orphans(conn: sa.Connection, *, limit: int = 1000) -> list[Published]:
    """Held jobs left with no waiting slot (their limits were removed) are queued."""
    waiting = sa.exists().where(limit_slots.c.job_id == jobs.c.id, limit_slots.c.admitted_at.is_(None))
    due = (
        sa.select(jobs.c.id)
        .where(jobs.c.state == "held", ~waiting)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id.in_(due.scalar_subquery()), jobs.c.state == "held")
        .values(state="queued", published_at=now())
        .returning(*_PUBLISH_COLUMNS)
    ).all()
    return [Published(*row) for row in rows]
