"""Held jobs and their admission: flow control's half of the ledger (docs/flow-control.md).

A job under a limit (``jobs.limits``) is created ``held``: it waits in the ledger, never on the
broker, with one ``limit_slots`` row per limit that applies to it (``hold``). It is admitted
(``held --admit--> queued``, marked published, sent after commit by the caller) when every one
of its limits has room:

- a **concurrency** cap's usage is the number of its admitted slot rows for the key. A row
  lives while its job is ``queued`` or ``running``: the finish, retry, cancel or rescue that
  ends that (``release``, in the same transaction) deletes it, and the leader's ``settle``
  deletes any a crash left behind (until then the cap is under-used, never exceeded);
- a **rate**'s state is GCRA's theoretical arrival time per key (``limit_keys.tat``): emission
  interval ``T = period / rate``, tolerance ``burst * T``; a start is allowed while
  ``tat - tolerance <= now``, and each moves ``tat`` on by ``T``. So in any window of one
  period at most ``rate + burst`` jobs are admitted.

Admission runs in the transaction that frees room: at submit (``admit_jobs``), in every finish
of a limited job that others wait behind (``release``), and on the leader's round for what time
frees (rates) or a lost race left (``admit``). Every admission of a limit holds the limit's
advisory transaction lock (taken in name order, so two admitters never deadlock; a job that
needs another limit too takes that one only if it is free, else waits for the next pass): two
workers, two leaders or a submitter never admit past a cap together.

Fairness (``jobs.ledger.room.waiting``): within a key, jobs go by priority, then by how long
they waited. A limit without a key serves the keys of the jobs' keyed limit round-robin.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.ledger.publishing import Published
from jobs.ledger.room import FAIR_SEPARATOR, Pair, Pass, begin, waiting
from jobs.ledger.statements import Executor, any_id, execute, now, param, under_a_limit
from jobs.schema import jobs, limit_keys, limit_slots, limits

__all__ = [
    "Pair",
    "admit",
    "admit_jobs",
    "admit_orphans",
    "applies",
    "cached_applies",
    "forget_targets",
    "free_slots",
    "hold",
    "hold_due",
    "next_token",
    "release",
    "settle",
]

_PUBLISH_COLUMNS = (jobs.c.id, jobs.c.kind, jobs.c.queue, jobs.c.priority, jobs.c.payload)
_UNFINISHED_ADMITTED = ("queued", "running")

#: Seconds a process trusts its list of limited kinds and queues (``applies``): a limit set at
#: runtime holds new submissions within this time.
TARGETS_TTL = 1.0
_targets: tuple[float, frozenset[str], frozenset[str]] = (-1e9, frozenset(), frozenset())


def cached_applies(kind: str, queue: str) -> bool | None:
    """``applies`` from this process's cache, or ``None`` when the cache is stale."""
    stamp, kinds, queues = _targets
    if time.monotonic() - stamp > TARGETS_TTL:
        return None
    return kind in kinds or queue in queues


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


def _ids(ids: Iterable[uuid.UUID]) -> sa.BindParameter[Any]:
    return sa.bindparam(None, list(ids), type_=pg.ARRAY(sa.Uuid))


def _add_slots(
    conn: sa.Connection, which: sa.ColumnElement[bool], *, mark: bool = True
) -> dict[uuid.UUID, list[Pair]]:
    """Open the missing slot rows of the selected jobs (one per limit that applies), and mark the
    jobs limited (unless ``mark`` is false: they were created so). The key is the payload's text
    at the limit's field path ('' without one)."""
    key = sa.func.coalesce(jobs.c.payload.op("#>>")(limits.c.key), "")
    fair = sa.func.first_value(
        sa.case((limits.c.key.is_not(None), limits.c.name + FAIR_SEPARATOR + key), else_=None)
    ).over(partition_by=jobs.c.id, order_by=(limits.c.key.is_(None), limits.c.name))
    applicable = (
        sa.select(jobs.c.id, limits.c.name, key, jobs.c.priority, sa.func.coalesce(fair, ""))
        .select_from(jobs)
        .join(limits, sa.or_(limits.c.kind == jobs.c.kind, limits.c.queue == jobs.c.queue))
        .where(which)
    )
    insert = (
        pg_insert(limit_slots)
        .from_select(["job_id", "limit_name", "key", "priority", "fair"], applicable)
        .on_conflict_do_nothing()
        .returning(limit_slots.c.job_id, limit_slots.c.limit_name, limit_slots.c.key)
    )
    if not mark:  # created limited already
        opened: dict[uuid.UUID, list[Pair]] = {}
        for row in conn.execute(insert):
            opened.setdefault(row.job_id, []).append((row.limit_name, row.key))
        return opened
    inserted = insert.cte("inserted")
    conn.execute(
        sa.update(jobs)
        .where(jobs.c.id.in_(sa.select(inserted.c.job_id)), jobs.c.limited.is_(False))
        .values(limited=True)
    )
    return {}


def hold(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Pair]]:
    """Give new ``held`` jobs, created ``limited``, their slot rows (one statement); returns them,
    for ``admit_jobs``."""
    return _add_slots(conn, any_id(ids), mark=False) if ids else {}


def hold_due(conn: sa.Connection, *, limit: int = 1000) -> int:
    """Due ``scheduled`` and ``retrying`` jobs under a limit become ``held`` instead of queued,
    with a waiting slot row for every limit that applies now. Returns how many."""
    due = (
        sa.select(jobs.c.id)
        .where(jobs.c.state.in_(("scheduled", "retrying")), jobs.c.not_before <= now(), under_a_limit())
        .order_by(jobs.c.not_before)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(conn.execute(due).scalars())
    if not ids:
        return 0
    # A row a crash left admitted waits again; then the missing ones (limits new since) open.
    conn.execute(
        sa.update(limit_slots).where(limit_slots.c.job_id == sa.any_(_ids(ids))).values(admitted_at=None)
    )
    _add_slots(conn, any_id(ids))
    conn.execute(sa.update(jobs).where(any_id(ids)).values(state="held", limited=True, published_at=None))
    return len(ids)


def _freed(which: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """Delete the slot rows of the selected jobs that are no longer held, queued or running (they
    finished, or back off for a retry, in this transaction); select the (limit, key) pairs they
    freed that jobs wait behind."""
    live = [jobs.c.state != state for state in ("held", *_UNFINISHED_ADMITTED)]  # no expanding IN: prepared
    gone = (
        sa.delete(limit_slots)
        .where(limit_slots.c.job_id.in_(sa.select(jobs.c.id).where(which, *live)))
        .returning(limit_slots.c.limit_name, limit_slots.c.key)
        .cte("gone")
    )
    behind = limit_slots.alias("behind")
    waiting_behind = sa.exists().where(
        behind.c.limit_name == gone.c.limit_name, behind.c.key == gone.c.key, behind.c.admitted_at.is_(None)
    )
    return sa.select(gone.c.limit_name, gone.c.key).where(waiting_behind)


def release(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> list[Published]:
    """After these jobs finished, were retried, cancelled or rescued (in this transaction): their
    slot rows go, and the jobs waiting behind the keys they freed are admitted. One statement
    when nothing waits behind them."""
    if not ids:
        return []
    pairs = conn.execute(_release_statement(), {"freed_ids": list(ids)}).all()
    if not pairs:
        return []
    return admit(conn, pairs=[(row.limit_name, row.key) for row in pairs])


@functools.cache
def _release_statement() -> sa.Select[Any]:
    """``release``'s statement, built once: every workflow step's finish runs it too."""
    return _freed(jobs.c.id == sa.any_(sa.bindparam("freed_ids", type_=pg.ARRAY(sa.Uuid)))).distinct()


@functools.cache
def _freed_statement() -> sa.Select[Any]:
    """``_freed`` for one job, built once (the worker's hot path prepares it): how many freed
    pairs have jobs waiting behind them."""
    freed = _freed(jobs.c.id == param("w_job_id", sa.Uuid)).subquery()
    return sa.select(sa.func.count()).select_from(freed)


def free_slots(conn: Executor, job_id: uuid.UUID) -> bool:
    """After this job finished (in this transaction): drop its slot rows; ``True`` when jobs wait
    behind the keys it freed, which ``release`` must then admit in the same transaction (the
    worker's finish then runs again on the admitting path)."""
    row = execute(conn, _freed_statement(), {"w_job_id": job_id})
    return bool(row is not None and row[0])


def settle(conn: sa.Connection) -> int:
    """Delete slot rows whose job is no longer held, queued or running (a worker that died between
    its finish and its release): the cap they kept under-used is whole again."""
    live = ("held", *_UNFINISHED_ADMITTED)
    stale = sa.select(jobs.c.id).where(jobs.c.id == limit_slots.c.job_id, jobs.c.state.in_(live))
    return conn.execute(sa.delete(limit_slots).where(~sa.exists(stale))).rowcount


def admit_jobs(
    conn: sa.Connection, ids: Sequence[uuid.UUID], slots: dict[uuid.UUID, list[Pair]] | None = None
) -> list[Published]:
    """Admit these held jobs, just created in this transaction, if their limits have room, in
    this order; ``slots``: what ``hold`` returned for them."""
    if not ids:
        return []
    run = begin(conn)
    known = slots if slots is not None else _slots_of(run, list(ids))
    slots = {job_id: known.get(job_id, []) for job_id in ids}
    run.lock(name for pairs in slots.values() for name, _ in pairs)
    return _admit(run, list(ids), slots, new=True)


def admit(
    conn: sa.Connection,
    *,
    pairs: Iterable[Pair] | None = None,
    names: Iterable[str] | None = None,
    rates_only: bool = False,
) -> list[Published]:
    """Admit waiting jobs of these limit keys (``pairs``), of every key of ``names``, or of every
    limit (every rate limit with ``rates_only``) when neither is given: as many as every limit of
    each job allows, fairly."""
    run = begin(conn)
    if not run.limits:
        return []
    if pairs is not None:
        wanted = sorted({pair for pair in pairs if pair[0] in run.limits})
        run.lock(name for name, _ in wanted)
    else:
        every = [name for name, rule in run.limits.items() if not rates_only or rule.concurrency is None]
        chosen = sorted(every if names is None else set(names) & set(every))
        run.lock(chosen)
        waiting_pairs = (
            sa.select(limit_slots.c.limit_name, limit_slots.c.key)
            .where(limit_slots.c.limit_name.in_(chosen), limit_slots.c.admitted_at.is_(None))
            .distinct()
        )
        wanted = [(row.limit_name, row.key) for row in conn.execute(waiting_pairs)]
    admitted: list[Published] = []
    for pair in wanted:
        while (room := run.free(pair)) > 0:
            candidates = waiting(run, pair, room * 2 + 8)
            got = _admit(run, candidates, _slots_of(run, candidates)) if candidates else []
            admitted += got
            if not got:
                break
    return admitted


def _slots_of(run: Pass, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Pair]]:
    """The waiting slots of each job (the limits that must still admit it)."""
    found: dict[uuid.UUID, list[Pair]] = {job_id: [] for job_id in ids}
    if ids:
        rows = run.conn.execute(
            sa.select(limit_slots.c.job_id, limit_slots.c.limit_name, limit_slots.c.key).where(
                limit_slots.c.job_id == sa.any_(_ids(ids)), limit_slots.c.admitted_at.is_(None)
            )
        )
        for row in rows:
            found[row.job_id].append((row.limit_name, row.key))
    return found


def _admit(
    run: Pass, candidates: list[uuid.UUID], slots: dict[uuid.UUID, list[Pair]], *, new: bool = False
) -> list[Published]:
    """Admit each candidate whose every waiting slot has room; returns them to publish. ``new``:
    the candidates were created in this transaction (no other can have locked them)."""
    if candidates and not new:
        # A held job another transaction has locked (a cancel, which then waits for this limit's
        # lock to admit the next) waits for the next pass: waiting for its row would deadlock.
        lockable = sa.select(jobs.c.id).where(any_id(candidates), jobs.c.state == "held")
        unlocked = set(run.conn.execute(lockable.with_for_update(skip_locked=True)).scalars())
        candidates = [job_id for job_id in candidates if job_id in unlocked]
    chosen: list[uuid.UUID] = []
    for job_id in candidates:
        pairs = [pair for pair in slots[job_id] if pair[0] in run.limits]
        if not run.try_lock(name for name, _ in pairs):
            continue  # another admitter holds one of its limits: the next pass takes it
        if all(run.free(pair) > 0 for pair in pairs):
            for pair in pairs:
                run.take(pair)
            chosen.append(job_id)
    return _mark(run, chosen) if chosen else []


def _mark(run: Pass, chosen: list[uuid.UUID]) -> list[Published]:
    """The chosen jobs are admitted: their slots, their keys' clocks and turns, their rows."""
    conn = run.conn
    if run.moved:
        moved = sorted(run.moved)
        statement = pg_insert(limit_keys).values(
            [
                {
                    "limit_name": name,
                    "key": key,
                    "tat": run.tat.get((name, key)),
                    "last_admitted_at": run.clock,
                }
                for name, key in moved
            ]
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[limit_keys.c.limit_name, limit_keys.c.key],
                set_={"tat": statement.excluded.tat, "last_admitted_at": statement.excluded.last_admitted_at},
            )
        )
        run.moved.clear()
    opened = (
        sa.update(limit_slots)
        .where(limit_slots.c.job_id == sa.any_(_ids(chosen)), limit_slots.c.admitted_at.is_(None))
        .values(admitted_at=run.clock)
        .cte("opened")
    )
    rows = conn.execute(
        sa.update(jobs)
        .where(any_id(chosen), jobs.c.state == "held")
        # The admission's instant is the clock the rates count by (GCRA), not the transaction's start.
        .values(state="queued", published_at=run.clock)
        .returning(*_PUBLISH_COLUMNS)
        .add_cte(opened)
    ).all()
    return [Published(*row) for row in rows]


def next_token(conn: sa.Connection) -> float | None:
    """Seconds until a rate limit's next token for a key with jobs waiting (``None``: no such
    key): when the leader's admitter should run again, so rated jobs start evenly spaced."""
    tolerance = sa.func.make_interval(0, 0, 0, 0, 0, 0, limits.c.burst * limits.c.period / limits.c.rate)
    waiting_key = sa.exists().where(
        limit_slots.c.limit_name == limit_keys.c.limit_name,
        limit_slots.c.key == limit_keys.c.key,
        limit_slots.c.admitted_at.is_(None),
    )
    due = sa.func.min(limit_keys.c.tat - tolerance)
    wait = conn.execute(
        sa.select(sa.func.extract("epoch", due - sa.func.clock_timestamp()))
        .select_from(limit_keys.join(limits, limits.c.name == limit_keys.c.limit_name))
        .where(limits.c.rate.is_not(None), waiting_key)
    ).scalar_one()
    return None if wait is None else max(float(wait), 0.0)


def admit_orphans(conn: sa.Connection, *, limit: int = 1000) -> list[Published]:
    """Held jobs left with no waiting slot (their limits were removed) are queued; a workflow step
    waiting for its parents is not one of them."""
    waiting_slot = sa.exists().where(limit_slots.c.job_id == jobs.c.id, limit_slots.c.admitted_at.is_(None))
    due = (
        sa.select(jobs.c.id)
        .where(jobs.c.state == "held", jobs.c.pending == 0, ~waiting_slot)
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
