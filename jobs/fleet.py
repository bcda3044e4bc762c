"""The fleet as operators see it: the ledger's roster, checked against what answers through Redis.

Two sources, one list. The **roster** (``jobs.roster``, in the ledger) says
which worker processes exist, where they run, the queues they were started
with, the kinds they implement and when they last sent a heartbeat: a worker
is ``alive`` while its heartbeat is fresh, ``silent`` once it stopped sending
(killed, or cut off from PostgreSQL), ``stopped`` after a clean shutdown.
Celery's **remote control** (``inspect`` through the broker) adds what only a
live main process can say: its pool and the jobs it runs now. A worker that
answers but is not in the roster (an older version, or one that cannot reach
the ledger) is listed as ``unlisted``.

A batched worker (``jobs worker -P batched``) is one Celery node per process
(``NAME-I.XXXX@HOST``, jobs.batched_pool); its processes are listed as one
worker, ``NAME@HOST`` with pool ``batched``, as many as its live processes for
its size, their running jobs together, and each process under ``processes``.
A process that went silent or stopped (one its supervisor replaced) is listed
apart from the live ones, under the same name with its own state.

Consumers of a queue are the live workers started with it, so a paused queue
(whose consumer a worker cancels) still shows the workers that will take its
jobs once it is resumed. The inspect questions are asked at once, so a look at
the fleet costs one timeout, not three.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobs import db, roster
from jobs.errors import BrokerUnavailable, JobsError
from jobs.settings import Settings

__all__ = ["ActiveJob", "Worker", "consumers", "grouped", "implementers", "live_nodes", "workers"]

#: Workers that stopped or went silent longer ago than this are no longer listed.
FORGET_AFTER = 3600.0


@dataclasses.dataclass(frozen=True, slots=True)
class ActiveJob:
    """A job a worker runs now (Celery's task id is the job id, its name the kind)."""

    id: str
    kind: str
    started: float | None
    """Unix time the worker started it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Worker:
    """One worker process, from the roster and (when it answered) from its own main process."""

    name: str
    queues: list[str]
    pool: str
    concurrency: int | None
    uptime: float | None
    pid: int | None
    active: list[ActiveJob]
    host: str | None = None
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    state: str = "alive"
    """``alive``, ``silent`` (no heartbeat for three periods), ``stopped`` or ``unlisted``."""
    heartbeat: datetime | None = None
    answered: bool | None = None
    """Whether it answered through Redis (``None``: the workers could not be asked)."""
    processes: list[Worker] = dataclasses.field(default_factory=list)
    """A batched worker's processes, each as its own node (empty for the other pools)."""

    @property
    def live(self) -> bool:
        return self.state in ("alive", "unlisted")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ask(settings: Settings, command: str, timeout: float) -> dict[str, Any]:
    from jobs.app import get_app

    app = get_app()
    with app.connection_for_write() as connection:
        # Bounded: the app retries the broker forever; a view must not hang on it.
        connection.ensure_connection(max_retries=1, timeout=math.ceil(timeout))
        replies = app.control.inspect(timeout=timeout, connection=connection)._request(command)
    return replies if isinstance(replies, dict) else {}


def _pool_name(pool: dict[str, Any]) -> str:
    implementation = str(pool.get("implementation") or "?")
    # "celery.concurrency.prefork:TaskPool" -> "prefork"
    return implementation.split(":", maxsplit=1)[0].rsplit(".", 1)[-1]


def _inspect(settings: Settings, timeout: float) -> dict[str, Worker]:
    commands = ("stats", "active_queues", "active")
    try:
        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            futures = [pool.submit(_ask, settings, command, timeout) for command in commands]
            stats, queues, active = (future.result() for future in futures)
    except BrokerUnavailable:
        raise
    except Exception as error:  # kombu and redis raise many types for "broker unreachable"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise BrokerUnavailable(f"cannot reach the workers through Redis: {reason}") from error
    found = {}
    for name in sorted(set(stats) | set(queues) | set(active)):
        info = stats.get(name) or {}
        pool_info = info.get("pool") or {}
        concurrency = pool_info.get("max-concurrency")
        found[name] = Worker(
            name=name,
            queues=sorted(str(queue.get("name")) for queue in queues.get(name) or []),
            pool=_pool_name(pool_info),
            concurrency=int(concurrency) if concurrency is not None else None,
            uptime=info.get("uptime"),
            pid=info.get("pid"),
            active=[
                ActiveJob(str(task.get("id")), str(task.get("name")), task.get("time_start"))
                for task in active.get(name) or []
            ],
            state="unlisted",
            answered=True,
        )
    return found


def _listed(settings: Settings) -> tuple[list[roster.Member], datetime] | None:
    try:
        with db.transaction(settings) as conn:
            now = conn.execute(sa.select(sa.func.now())).scalar_one()
            found = roster.members(conn, dead_after=settings.worker_dead_after, include_dead=True)
    except (JobsError, sa.exc.SQLAlchemyError):  # the ledger is away, or older than the roster
        return None
    return [m for m in found if m.alive or _age(m, now) < FORGET_AFTER], now


def _age(member: roster.Member, now: datetime) -> float:
    last = member.stopped_at or member.heartbeat_at or now
    return (now - last).total_seconds()


def workers(
    settings: Settings, *, timeout: float = 1.0, ask: bool = True, stopped: bool = False
) -> list[Worker]:
    """Every worker in the roster (and every one that answers within ``timeout`` seconds): live
    ones, silent ones (gone without a word) for an hour, and with ``stopped`` those that stopped
    cleanly in the last hour.

    Raises ``BrokerUnavailable`` when neither the ledger's roster nor Redis could be read.
    """
    answered: dict[str, Worker] | None = None
    problem: BrokerUnavailable | None = None
    if ask:
        try:
            answered = _inspect(settings, timeout)
        except BrokerUnavailable as error:
            problem = error
    listed = _listed(settings)
    if listed is None:
        if answered is None:
            raise problem or BrokerUnavailable("neither the ledger's roster nor the workers could be read")
        return list(answered.values())
    members, now = listed
    if not stopped:
        members = [member for member in members if member.alive or member.stopped_at is None]
    merged = []
    for member in members:
        live = answered.get(member.name) if answered is not None else None
        state = "alive" if member.alive else ("stopped" if member.stopped_at else "silent")
        merged.append(
            Worker(
                name=member.name,
                queues=list(member.queues),
                pool=member.pool or (live.pool if live else "?"),
                concurrency=member.concurrency if live is None else (member.concurrency or live.concurrency),
                uptime=(now - member.started_at).total_seconds()
                if member.started_at and member.alive
                else None,
                pid=member.pid,
                active=live.active if live else [],
                host=member.host,
                kinds=dict(member.kinds),
                state=state,
                heartbeat=member.heartbeat_at,
                answered=None if answered is None else live is not None,
            )
        )
    names = {member.name for member in members}
    merged += [worker for name, worker in (answered or {}).items() if name not in names]
    return sorted(grouped(merged), key=lambda worker: (not worker.live, worker.name))


def grouped(found: list[Worker]) -> list[Worker]:
    """One worker for the processes of each batched worker in the same state."""
    from jobs.batched_pool import group_of

    groups: dict[tuple[str, str], list[Worker]] = {}
    listed = []
    for worker in found:
        group = group_of(worker.name) if worker.pool == "batched" else None
        if group is None:
            listed.append(worker)
        else:
            groups.setdefault((group, worker.state), []).append(worker)
    for (name, state), processes in groups.items():
        uptimes = [process.uptime for process in processes if process.uptime is not None]
        beats = [process.heartbeat for process in processes if process.heartbeat is not None]
        answers = [process.answered for process in processes if process.answered is not None]
        listed.append(
            Worker(
                name=name,
                queues=sorted({queue for process in processes for queue in process.queues}),
                pool="batched",
                concurrency=sum(process.concurrency or 1 for process in processes),
                uptime=max(uptimes, default=None),
                pid=None,
                active=[job for process in processes for job in process.active],
                host=processes[0].host,
                kinds={kind: version for process in processes for kind, version in process.kinds.items()},
                state=state,
                heartbeat=max(beats, default=None),
                answered=any(answers) if answers else None,
                processes=sorted(processes, key=lambda process: process.name),
            )
        )
    return listed


def live_nodes(found: list[Worker]) -> set[str]:
    """The node names of the live workers and of their processes: what the ledger's ``worker``
    column names (a batched worker's jobs run on its processes, ``NAME-I.XXXX@HOST``)."""
    return {
        node
        for worker in found
        if worker.live
        for node in (worker.name, *(process.name for process in worker.processes if process.live))
    }


def consumers(found: list[Worker]) -> dict[str, list[str]]:
    """Queue name to the live workers started with it (a paused queue keeps its consumers)."""
    by_queue: dict[str, list[str]] = {}
    for worker in found:
        if worker.live:
            for queue in worker.queues:
                by_queue.setdefault(queue, []).append(worker.name)
    return by_queue


def implementers(found: list[Worker], kind: str, queue: str | None = None) -> list[str]:
    """Live workers that implement ``kind`` (and consume ``queue``, when given)."""
    return [
        worker.name
        for worker in found
        if worker.live and kind in worker.kinds and (queue is None or queue in worker.queues)
    ]
