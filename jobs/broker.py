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
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from jobs import wire
from jobs.errors import BrokerUnavailable
from jobs.settings import Settings

if TYPE_CHECKING:
    import redis

__all__ = [
    "Depth",
    "Held",
    "Quarantine",
    "RedisConfig",
    "client",
    "config",
    "depths",
    "held_by_tags",
    "held_longer_than",
    "quarantine",
    "quarantined",
    "queue_names",
    "ready_messages",
    "restore",
]

PRIORITIES = range(10)  # the app's priority_steps (jobs.app)
UNACKED = "unacked"  # kombu's default unacked_key
UNACKED_INDEX = "unacked_index"  # kombu's default unacked_index_key: delivery tag -> when delivered
BINDINGS = "_kombu.binding.%s"  # kombu's table of an exchange's bindings
QUARANTINE = "jobs.quarantine"  # malformed items workers took off queues (workers.transport)
QUARANTINED = "jobs.quarantined"  # how many were ever quarantined (since Redis last lost its data)
QUARANTINE_KEEP = 1000
QUARANTINE_ITEM_BYTES = 64 * 1024


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


def depths(
    settings: Settings, queues: Iterable[str], *, timeout: float = 2.0, discover: bool = False
) -> dict[str, Depth]:
    """Ready and reserved messages of each queue (and, with ``discover``, of every other queue that
    holds messages in Redis); raises ``BrokerUnavailable``."""
    from redis.exceptions import RedisError

    try:
        redis_client = client(settings, timeout)
        names = sorted(set(queues) | (queue_names(redis_client) if discover else set()))
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


#: Lists in the broker's db that are not queues: kombu's bookkeeping, replies, the quarantine.
_NOT_QUEUES = (UNACKED, UNACKED_INDEX, "unacked_mutex", QUARANTINE)


def queue_names(redis_client: redis.Redis) -> set[str]:
    """Every queue that holds messages in the broker's db (a SCAN over its lists)."""
    names = set()
    for key in redis_client.scan_iter(count=1000, _type="LIST"):
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        name = name.split(wire.PRIORITY_SEPARATOR, 1)[0]
        if name in _NOT_QUEUES or name.endswith(".reply.celery.pidbox") or name.startswith("_kombu."):
            continue
        names.add(name)
    return names


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
class Held:
    """A message a worker took and has not acknowledged (kombu's ``unacked`` hash)."""

    tag: str
    age: float
    """Seconds since a worker took it."""
    job_id: uuid.UUID | None
    """Its task id, when that is a UUID (a job id)."""
    kind: str | None
    message: dict[str, Any]
    exchange: str
    routing_key: str


def held_longer_than(redis_client: redis.Redis, seconds: float, *, limit: int = 1000) -> list[Held]:
    """Messages taken by a worker more than ``seconds`` ago and not acknowledged, oldest first."""
    now = time.time()
    tagged: list[tuple[bytes, float]] = redis_client.zrangebyscore(  # type: ignore[assignment]
        UNACKED_INDEX, "-inf", now - seconds, start=0, num=limit, withscores=True
    )  # redis-py types the reply as a list of anything; withscores makes it (member, score) pairs
    if not tagged:
        return []
    return _held(redis_client, tagged, now)


def held_by_tags(redis_client: redis.Redis, tags: Iterable[str]) -> list[Held]:
    """The messages with these delivery tags that are still unacknowledged."""
    tags = list(tags)
    if not tags:
        return []
    now = time.time()
    taken = redis_client.zmscore(UNACKED_INDEX, tags)
    return _held(
        redis_client,
        [(tag, when if when is not None else now) for tag, when in zip(tags, taken, strict=True)],
        now,
    )


def _held(redis_client: redis.Redis, tagged: list[tuple[Any, float]], now: float) -> list[Held]:
    values = redis_client.hmget(UNACKED, [tag for tag, _ in tagged])
    found = []
    for (tag, taken), value in zip(tagged, values, strict=True):
        if value is None:  # acknowledged meanwhile
            continue
        try:
            message, exchange, routing_key = json.loads(value)
            headers = message.get("headers") or {}
        except (ValueError, TypeError, AttributeError):
            continue  # not kombu's format: left to kombu's own visibility timeout
        try:
            job_id: uuid.UUID | None = uuid.UUID(str(headers.get("id")))
        except ValueError:
            job_id = None
        found.append(
            Held(
                tag=tag.decode() if isinstance(tag, bytes) else str(tag),
                age=now - float(taken),
                job_id=job_id,
                kind=str(headers["task"]) if headers.get("task") is not None else None,
                message=message,
                exchange=str(exchange or ""),
                routing_key=str(routing_key or ""),
            )
        )
    return found


# Moves one unacknowledged message back to the head of its queue, unless it was acknowledged or
# restored meanwhile (HDEL decides): the same steps as kombu's restore, made atomic.
_RESTORE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('RPUSH', KEYS[3], ARGV[2])
    return 1
end
return 0
"""


def restore(redis_client: redis.Redis, held: Held) -> bool:
    """Put a held message back on its queue, to be taken next; ``False`` if it was acknowledged."""
    message = json.loads(json.dumps(held.message))
    message.setdefault("headers", {})["redelivered"] = True
    message.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
    try:
        priority = int(message["properties"].get("priority") or 0)
    except (TypeError, ValueError):
        priority = 0
    key = wire.queue_key(_queue(redis_client, held), min(max(priority, 0), 9))
    restored = redis_client.eval(_RESTORE, 3, UNACKED, UNACKED_INDEX, key, held.tag, json.dumps(message))
    return bool(restored)


def _queue(redis_client: redis.Redis, held: Held) -> str:
    """The queue a message was routed to: its routing key, or its exchange's binding (kombu's table)."""
    if not held.exchange:
        return held.routing_key
    separator = wire.PRIORITY_SEPARATOR
    for member in redis_client.smembers(BINDINGS % held.exchange):
        text = member.decode() if isinstance(member, bytes) else str(member)
        routing_key, _, queue = text.split(separator, 2)
        if routing_key == held.routing_key and queue:
            return queue
    return held.routing_key


def quarantine(redis_client: redis.Redis, item: bytes) -> None:
    """Keep a malformed item in the bounded quarantine list (the newest first) and count it."""
    pipe = redis_client.pipeline(transaction=True)
    pipe.lpush(QUARANTINE, item[:QUARANTINE_ITEM_BYTES])
    pipe.ltrim(QUARANTINE, 0, QUARANTINE_KEEP - 1)
    pipe.incr(QUARANTINED)
    pipe.execute()


@dataclasses.dataclass(frozen=True, slots=True)
class Quarantine:
    """Malformed items workers moved out of the queues."""

    kept: int
    total: int
    newest: bytes | None
    """The first bytes of the newest kept item."""


def quarantined(redis_client: redis.Redis) -> Quarantine:
    """What the quarantine holds (one round trip)."""
    pipe = redis_client.pipeline(transaction=False)
    pipe.llen(QUARANTINE)
    pipe.get(QUARANTINED)
    pipe.lindex(QUARANTINE, 0)
    kept, total, newest = pipe.execute()
    return Quarantine(int(kept or 0), int(total or 0), bytes(newest[:80]) if newest else None)


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
