"""The fleet's roster in the ledger: which workers are alive, what they consume and implement.

Every worker process enlists when it starts (its unique node name, host,
pid, the queues it was started with, and each kind it implements with the
kind's version), writes a heartbeat every ``JOBS_WORKER_HEARTBEAT`` seconds,
and marks itself stopped when it shuts down cleanly. A worker whose
heartbeat is older than ``Settings.worker_dead_after`` (three heartbeats) is
dead, whatever its row says: a SIGKILLed worker never says goodbye.

The platform reads the roster to know whether any live worker can run a job
(``jobs explain``, ``jobs doctor``, the relay of jobs handed back by workers
that lack their kind) and to show one list of workers everywhere. Every kind
a worker ever advertised is also kept in ``fleet_kinds``, after its workers
are gone: a foreign message of a kind nobody in the fleet ever implemented can
then be told from a job that merely waits for the next deploy.

This module is the only writer of ``workers`` and ``fleet_kinds``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.schema import fleet_kinds, workers

__all__ = [
    "Member",
    "alive",
    "enlist",
    "ever_implemented",
    "heartbeat",
    "implementers",
    "live_implementer",
    "members",
    "prune",
    "retire",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """One worker process as it enlists in the roster."""

    name: str
    host: str
    pid: int
    queues: tuple[str, ...]
    kinds: Mapping[str, str]
    """Each kind this worker implements, with its advertised version."""
    pool: str | None = None
    concurrency: int | None = None
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    stopped_at: datetime | None = None
    alive: bool = True
    """Whether its heartbeat is recent (read from the ledger; always True for a new member)."""

    def as_dict(self) -> dict[str, Any]:
        found = dataclasses.asdict(self)
        found["queues"] = list(self.queues)
        found["kinds"] = dict(self.kinds)
        return found


def _within(seconds: float) -> sa.ColumnElement[datetime]:
    return sa.func.now() - sa.bindparam(None, timedelta(seconds=seconds), type_=sa.Interval)


def alive(dead_after: float) -> sa.ColumnElement[bool]:
    """The condition on ``workers`` that holds for a live worker."""
    return sa.and_(workers.c.stopped_at.is_(None), workers.c.heartbeat_at > _within(dead_after))


def enlist(conn: sa.Connection, member: Member) -> None:
    """Add or renew this worker's row (alive now) and record the kinds it implements."""
    values = {
        "name": member.name,
        "host": member.host,
        "pid": member.pid,
        "queues": list(member.queues),
        "kinds": dict(member.kinds),
        "pool": member.pool,
        "concurrency": member.concurrency,
        "started_at": sa.func.now(),
        "heartbeat_at": sa.func.now(),
        "stopped_at": None,
    }
    statement = pg_insert(workers).values(values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[workers.c.name],
            set_={key: statement.excluded[key] for key in values if key != "name"},
        )
    )
    if member.kinds:
        kinds = pg_insert(fleet_kinds).values(
            [
                {"kind": kind, "version": version, "last_seen_by": member.name}
                for kind, version in member.kinds.items()
            ]
        )
        conn.execute(
            kinds.on_conflict_do_update(
                index_elements=[fleet_kinds.c.kind],
                set_={
                    "version": kinds.excluded.version,
                    "last_seen_at": sa.func.now(),
                    "last_seen_by": kinds.excluded.last_seen_by,
                },
            )
        )


def heartbeat(conn: sa.Connection, name: str) -> bool:
    """Say this worker is alive; ``False`` if it has no row (pruned, or never enlisted): enlist again."""
    updated = conn.execute(
        sa.update(workers).where(workers.c.name == name).values(heartbeat_at=sa.func.now(), stopped_at=None)
    )
    return updated.rowcount == 1


def retire(conn: sa.Connection, name: str) -> None:
    """This worker stopped cleanly: it is no longer counted as alive."""
    conn.execute(sa.update(workers).where(workers.c.name == name).values(stopped_at=sa.func.now()))


def _member(row: Any) -> Member:
    return Member(
        name=row.name,
        host=row.host,
        pid=row.pid,
        queues=tuple(row.queues),
        kinds=dict(row.kinds or {}),
        pool=row.pool,
        concurrency=row.concurrency,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        stopped_at=row.stopped_at,
        alive=bool(row.alive),
    )


def members(conn: sa.Connection, *, dead_after: float, include_dead: bool = False) -> list[Member]:
    """The workers in the roster, live ones (and with ``include_dead`` the others too), by name."""
    query = sa.select(workers, alive(dead_after).label("alive")).order_by(workers.c.name)
    if not include_dead:
        query = query.where(alive(dead_after))
    return [_member(row) for row in conn.execute(query)]


def live_implementer(
    kind: sa.ColumnElement[str], queue: sa.ColumnElement[str], dead_after: float
) -> sa.Exists:
    """``EXISTS`` a live worker that consumes ``queue`` and implements ``kind`` (for ledger queries)."""
    return sa.exists().where(
        alive(dead_after),
        workers.c.kinds.has_key(kind),
        queue == sa.any_(workers.c.queues),
    )


def implementers(conn: sa.Connection, kind: str, *, dead_after: float) -> list[Member]:
    """Live workers that implement ``kind`` (on whichever queues they consume)."""
    query = (
        sa.select(workers, alive(dead_after).label("alive"))
        .where(alive(dead_after), workers.c.kinds.has_key(kind))
        .order_by(workers.c.name)
    )
    return [_member(row) for row in conn.execute(query)]


def ever_implemented(conn: sa.Connection, kinds: Sequence[str]) -> set[str]:
    """Which of ``kinds`` a worker of this fleet has ever advertised."""
    if not kinds:
        return set()
    rows = conn.execute(sa.select(fleet_kinds.c.kind).where(fleet_kinds.c.kind.in_(list(kinds))))
    return set(rows.scalars())


def prune(conn: sa.Connection, *, older_than: float) -> int:
    """Forget workers stopped or silent for more than ``older_than`` seconds; returns how many."""
    gone = sa.func.coalesce(workers.c.stopped_at, workers.c.heartbeat_at) < _within(older_than)
    return conn.execute(sa.delete(workers).where(gone)).rowcount
