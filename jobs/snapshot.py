"""The platform at one moment: the ledger's numbers next to Redis's and the workers'.

``jobs queues`` and ``jobs top`` show a ``Snapshot``. The ledger is read in
one transaction (``jobs.observe``); Redis (``jobs.broker``) and the workers
(``jobs.fleet``) are asked separately and may be unreachable, which is
recorded, not raised: a view of a half-broken platform is when operators
need one most.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobs import broker, db, fleet, limit_usage, observe, pauses
from jobs.errors import BrokerUnavailable
from jobs.leader import current_leader
from jobs.limit_store import LimitRow
from jobs.settings import Settings

__all__ = ["Ledger", "QueueView", "Snapshot", "ask_workers", "queue_views", "read_ledger", "take"]


@dataclasses.dataclass(frozen=True, slots=True)
class Ledger:
    """What the ledger says, read in one transaction."""

    now: datetime
    queues: dict[str, observe.QueueStats]
    paused: dict[str, pauses.Pause]
    leader: str | None
    running: list[observe.Running]
    failures: list[observe.Failure]
    limits: list[tuple[LimitRow, limit_usage.KeyUsage]] = dataclasses.field(default_factory=list)
    """The busiest keys of the limits (flow control), each with its limit."""


def read_ledger(settings: Settings, *, running: int = 100, failures: int = 10, limits: int = 10) -> Ledger:
    """The ledger's side of a snapshot; raises ``LedgerUnavailable``."""
    with db.transaction(settings) as conn:
        return Ledger(
            now=conn.execute(sa.select(sa.func.now())).scalar_one(),
            queues=observe.queue_stats(conn),
            paused=pauses.paused(conn),
            leader=current_leader(conn),
            running=observe.running_jobs(conn, limit=running),
            failures=observe.recent_failures(conn, limit=failures),
            limits=limit_usage.busiest(conn, count=limits),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class QueueView:
    """One queue from every side: the ledger, Redis and the workers consuming it."""

    name: str
    ledger: observe.QueueStats | None
    redis: broker.Depth | None
    consumers: list[str] | None
    paused: bool

    @property
    def queued(self) -> int:
        return self.ledger.queued if self.ledger else 0

    @property
    def unconsumed(self) -> bool:
        """Work waits here (in the ledger or in Redis) and no live worker consumes the queue."""
        waiting = self.queued or (self.redis.ready if self.redis else 0)
        return self.consumers == [] and bool(waiting)

    @property
    def mismatch(self) -> bool:
        """Redis holds a different number of waiting messages than the ledger has queued jobs whose
        message went out (jobs waiting in the ledger for the relay are not on the broker)."""
        unpublished = self.ledger.unpublished if self.ledger else 0
        return self.redis is not None and self.redis.ready != self.queued - unpublished

    def as_dict(self) -> dict[str, Any]:
        stats = self.ledger
        return {
            "queue": self.name,
            "paused": self.paused,
            "ledger": {
                "states": dict(stats.states) if stats else {},
                "oldest_waiting_seconds": stats.oldest_waiting if stats else None,
                "succeeded_last_minute": stats.succeeded_recently if stats else 0,
                "failed_last_minute": stats.failed_recently if stats else 0,
                "queued_not_on_broker": stats.unpublished if stats else 0,
            },
            "redis": None
            if self.redis is None
            else {"ready": self.redis.ready, "reserved": self.redis.reserved},
            "mismatch": self.mismatch,
            "consumers": self.consumers,
            "unconsumed": self.unconsumed,
        }


def queue_views(
    ledger: Ledger,
    known: Iterable[str],
    depths: dict[str, broker.Depth] | None,
    workers: list[fleet.Worker] | None,
) -> list[QueueView]:
    """One view per queue that has jobs, is declared by a kind, is paused, is consumed, or holds
    messages in Redis (a queue no worker of the platform consumes shows up that way)."""
    consuming = fleet.consumers(workers) if workers is not None else {}
    in_redis = {name for name, depth in (depths or {}).items() if depth.ready or depth.reserved}
    names = set(known) | set(ledger.queues) | set(ledger.paused) | set(consuming) | in_redis
    return [
        QueueView(
            name=name,
            ledger=ledger.queues.get(name),
            redis=None if depths is None else depths.get(name, broker.Depth(name, 0, 0)),
            consumers=None if workers is None else consuming.get(name, []),
            paused=name in ledger.paused,
        )
        for name in sorted(names)
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the views show; ``*_error`` says why a side is missing."""

    ledger: Ledger
    queues: list[QueueView]
    workers: list[fleet.Worker] | None
    redis_error: str | None = None
    workers_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.ledger.now,
            "leader": self.ledger.leader,
            "queues": [view.as_dict() for view in self.queues],
            "running": [job.as_dict() for job in self.ledger.running],
            "recent_failures": [failure.as_dict() for failure in self.ledger.failures],
            "limits": [
                {"limit": row.name, "target": row.target, "definition": row.describe(), **used.as_dict()}
                for row, used in self.ledger.limits
            ],
            "workers": None if self.workers is None else [worker.as_dict() for worker in self.workers],
            "redis_error": self.redis_error,
            "workers_error": self.workers_error,
        }


def ask_workers(settings: Settings, timeout: float) -> tuple[list[fleet.Worker] | None, str | None]:
    """The workers that answer, or None and why not."""
    try:
        return fleet.workers(settings, timeout=timeout), None
    except BrokerUnavailable as error:
        return None, error.message


def take(
    settings: Settings,
    known: Iterable[str],
    *,
    timeout: float = 1.0,
    workers: tuple[list[fleet.Worker] | None, str | None] | None = None,
) -> Snapshot:
    """Read the ledger, Redis and (unless ``workers`` is given) the workers now."""
    ledger = read_ledger(settings)
    known = set(known)
    names = known | set(ledger.queues) | set(ledger.paused)
    found, workers_error = workers if workers is not None else ask_workers(settings, timeout)
    if found:
        names |= set(fleet.consumers(found))
    depths: dict[str, broker.Depth] | None
    try:
        depths = broker.depths(settings, names, timeout=timeout, discover=True)
        redis_error = None
    except BrokerUnavailable as error:
        depths, redis_error = None, error.message
    return Snapshot(
        ledger=ledger,
        queues=queue_views(ledger, known, depths, found),
        workers=found,
        redis_error=redis_error,
        workers_error=workers_error,
    )
