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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.ledger.publishing import Published
from jobs.ledger.room import Pair, Pass, begin, waiting
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


def admit_jobs(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> list[Published]:
    """Admit these held jobs (just submitted) if their limits have room, in this order."""
    if not ids:
        return []
    run = begin(conn)
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
    run = begin(conn)
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
        candidates = waiting(run, pair, room * 2 + 8)
        admitted += _admit(run, candidates)
    return admitted


def _admit(run: Pass, candidates: list[uuid.UUID]) -> list[Published]:
    """Admit each candidate whose every waiting slot has room; returns them to publish."""
    if not candidates:
        return []
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


def _mark(run: Pass, chosen: list[uuid.UUID]) -> list[Published]:
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
