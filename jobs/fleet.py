"""The live workers, as Celery's remote control sees them (``inspect`` through the broker).

A worker answers ``stats`` (pool, uptime), ``active_queues`` (what it
consumes) and ``active`` (what it runs) on its broker connection; a worker
that does not answer within the timeout is not listed. The three questions
are asked at once, so a look at the fleet costs one timeout, not three.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobs.errors import BrokerUnavailable
from jobs.settings import Settings

__all__ = ["ActiveJob", "Worker", "consumers", "workers"]


@dataclasses.dataclass(frozen=True, slots=True)
class ActiveJob:
    """A job a worker runs now (Celery's task id is the job id, its name the kind)."""

    id: str
    kind: str
    started: float | None
    """Unix time the worker started it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Worker:
    """One worker node that answered."""

    name: str
    queues: list[str]
    pool: str
    concurrency: int | None
    uptime: float | None
    pid: int | None
    active: list[ActiveJob]

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


def workers(settings: Settings, *, timeout: float = 1.0) -> list[Worker]:
    """Every worker that answers within ``timeout`` seconds; raises ``BrokerUnavailable``."""
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
    found = []
    for name in sorted(set(stats) | set(queues) | set(active)):
        info = stats.get(name) or {}
        pool_info = info.get("pool") or {}
        concurrency = pool_info.get("max-concurrency")
        found.append(
            Worker(
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
            )
        )
    return found


def consumers(found: list[Worker]) -> dict[str, list[str]]:
    """Queue name to the workers consuming it."""
    by_queue: dict[str, list[str]] = {}
    for worker in found:
        for queue in worker.queues:
            by_queue.setdefault(queue, []).append(worker.name)
    return by_queue
