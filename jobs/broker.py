"""What Redis (the transport) holds: messages per queue, messages workers reserved, its settings.

kombu's Redis transport keeps a queue as one list per priority step (the
queue's own name for step 0, then ``NAME\\x06\\x16N``, see ``jobs.wire``), and
a message a worker has taken but not yet acknowledged in the ``unacked``
hash, as ``[message, exchange, routing_key]``. Redis is only the transport:
these numbers are compared with the ledger's, never trusted over it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from jobs import wire
from jobs.errors import BrokerUnavailable
from jobs.settings import Settings

if TYPE_CHECKING:
    import redis

__all__ = ["Depth", "RedisConfig", "client", "config", "depths", "ready_messages"]

PRIORITIES = range(10)  # the app's priority_steps (jobs.app)
UNACKED = "unacked"  # kombu's default unacked_key


def client(settings: Settings, timeout: float = 2.0) -> redis.Redis:
    """A Redis client for the broker with short timeouts (for views and checks, not publishing)."""
    import redis

    return redis.Redis.from_url(
        settings.broker_url.replace("redis+socket://", "unix://", 1),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )


def _unavailable(settings: Settings, error: BaseException) -> BrokerUnavailable:
    from urllib.parse import urlsplit

    where = urlsplit(settings.broker_url)
    host = where.path if where.scheme == "redis+socket" else f"{where.hostname}:{where.port or 6379}"
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return BrokerUnavailable(f"Redis is unreachable at {host}: {reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class Depth:
    """One queue in Redis: messages waiting, and messages reserved by workers (not yet acked)."""

    queue: str
    ready: int
    reserved: int


def depths(settings: Settings, queues: Iterable[str], *, timeout: float = 2.0) -> dict[str, Depth]:
    """Ready and reserved messages of each queue; raises ``BrokerUnavailable``."""
    from redis.exceptions import RedisError

    names = sorted(set(queues))
    try:
        redis_client = client(settings, timeout)
        ready = ready_messages(redis_client, names)
        reserved = _reserved_by_queue(redis_client.hvals(UNACKED))
    except (RedisError, OSError) as error:
        raise _unavailable(settings, error) from error
    return {queue: Depth(queue, ready[queue], reserved.get(queue, 0)) for queue in names}


def ready_messages(redis_client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue, every priority step counted (one round trip)."""
    names = list(queues)
    pipe = redis_client.pipeline(transaction=False)
    for queue in names:
        for priority in PRIORITIES:
            pipe.llen(wire.queue_key(queue, priority))
    lengths = pipe.execute()
    return {
        queue: sum(lengths[index * len(PRIORITIES) : (index + 1) * len(PRIORITIES)])
        for index, queue in enumerate(names)
    }


def _reserved_by_queue(values: Iterable[bytes | str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        try:
            routing_key = json.loads(value)[2]
        except (ValueError, IndexError, TypeError):
            continue
        counts[str(routing_key)] = counts.get(str(routing_key), 0) + 1
    return counts


@dataclasses.dataclass(frozen=True, slots=True)
class RedisConfig:
    """What decides whether Redis keeps messages: persistence and eviction (None: CONFIG refused)."""

    save: str | None
    appendonly: str | None
    maxmemory_policy: str | None

    @property
    def persistent(self) -> bool | None:
        if self.save is None or self.appendonly is None:
            return None
        return self.appendonly == "yes" or bool(self.save.strip())


def config(settings: Settings, *, timeout: float = 2.0) -> RedisConfig:
    """Redis's persistence and eviction settings; raises ``BrokerUnavailable`` if Redis is down.

    Managed Redis services often refuse ``CONFIG``: the values are then ``None`` (unknown).
    """
    from redis.exceptions import ResponseError

    redis_client = client(settings, timeout)
    values: dict[str, str | None] = {}
    try:
        redis_client.ping()
        for name in ("save", "appendonly", "maxmemory-policy"):
            try:
                reply: Any = redis_client.config_get(name)
            except ResponseError:
                values[name] = None
                continue
            raw = reply.get(name) if isinstance(reply, dict) else None
            values[name] = raw.decode() if isinstance(raw, bytes) else raw
    except Exception as error:  # connection, timeout or auth: all mean "cannot use this Redis"
        raise _unavailable(settings, error) from error
    return RedisConfig(values["save"], values["appendonly"], values["maxmemory-policy"])
