"""Celery messages built once and pushed to Redis in pipelines (the fast publishing path).

Celery's ``apply_async`` spends most of a publish in Python: building the
message, routing, signals, one round trip per message. The ledger already
knows everything a message needs, so the platform builds the task-protocol-2
message itself, in the exact shape kombu's Redis transport stores (a JSON
envelope with a base64 body, LPUSHed onto the queue's list, one list per
priority step), and sends many per round trip. Workers consume them as any
Celery message; ``tests/integration/test_wire.py`` checks the format against
kombu's own publisher.

What this path does not do: send Celery's ``task-sent`` event, so Flower shows
a job from the moment a worker receives it.
"""

from __future__ import annotations

import binascii
import functools
import itertools
import json
import os
import re
import socket
import uuid
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as _json_string  # json.dumps(str), without its checks
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

__all__ = ["PRIORITY_SEPARATOR", "Envelope", "broker_errors", "encode", "envelope", "push", "queue_key"]

#: kombu's separator between a queue's name and its priority step.
PRIORITY_SEPARATOR = "\x06\x16"
_EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def queue_key(queue: str, priority: int) -> str:
    """The Redis list holding ``queue``'s messages of this priority (0 is the queue itself)."""
    return f"{queue}{PRIORITY_SEPARATOR}{priority}" if priority else queue


_HEAD = (
    '{{"body": "{body}", "content-encoding": "utf-8", "content-type": "application/json", '
    '"headers": {{"lang": "py", "task": {kind}, "id": "{id}", "shadow": null, "eta": null, '
    '"expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], '
    '"root_id": "{id}", "parent_id": null, "argsrepr": "()", "kwargsrepr": {shown}, '
    '"origin": {origin}, "ignore_result": null, "replaced_task_nesting": 0, '
    '"stamped_headers": null, "stamps": {{}}}}, '
    '"properties": {{"correlation_id": "{id}", "reply_to": null, "delivery_mode": 2, '
    '"delivery_info": {{"exchange": "", "routing_key": {queue}}}, "priority": {priority}, '
    '"body_encoding": "base64", "delivery_tag": "{tag}"}}}}'
)
_ORIGIN_JSON = json.dumps(_ORIGIN)
_BODY_TAIL = f", {_EMBED}]".encode()


class Envelope:
    """The message template of one (kind, queue, priority), rendered once: per job only the
    id, the body and its display are filled in between the constant parts."""

    __slots__ = ("_parts",)

    # The template's slots in the order they occur: the body, the id (the task's, the root's),
    # the displayed kwargs, the id (the correlation id), the delivery tag.
    _SLOTS = "\x01\x02\x02\x03\x02\x04"

    def __init__(self, kind: str, queue: str, priority: int) -> None:
        # Control characters mark the slots: json.dumps escapes them in every constant part.
        rendered = _HEAD.format(
            body="\x01",
            kind=json.dumps(kind),
            id="\x02",
            shown="\x03",
            origin=_ORIGIN_JSON,
            queue=json.dumps(queue),
            priority=int(priority),
            tag="\x04",
        )
        assert "".join(c for c in rendered if c in "\x01\x02\x03\x04") == self._SLOTS
        self._parts = tuple(re.split("[\x01-\x04]", rendered))

    def encode(self, job_id: str, payload_json: str, shown: str) -> str:
        """The message of one job: ``payload_json`` is its kwargs, ``shown`` what people may see."""
        body = binascii.b2a_base64(b"[[], " + payload_json.encode() + _BODY_TAIL, newline=False).decode()
        p0, p1, p2, p3, p4, p5, p6 = self._parts
        return f"{p0}{body}{p1}{job_id}{p2}{job_id}{p3}{_json_string(shown)}{p4}{job_id}{p5}{next_tag()}{p6}"


@functools.lru_cache(maxsize=256)
def envelope(kind: str, queue: str, priority: int) -> Envelope:
    """The cached template for messages of ``kind`` on ``queue`` at ``priority``."""
    return Envelope(kind, queue, priority)


def encode(job_id: uuid.UUID, kind: str, queue: str, priority: int, payload_json: str, shown: str) -> str:
    """One Celery protocol-2 message, as kombu's Redis transport stores it (a JSON envelope)."""
    return envelope(kind, queue, int(priority)).encode(str(job_id), payload_json, shown)


class _Tags:
    """Delivery tags: unique per message, cheaper than a uuid4 each (kombu only needs uniqueness).

    A random prefix per process (renewed in forked children) and a counter.
    """

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.prefix = f"{uuid.uuid4().hex[:20]}-"
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):012x}"


next_tag = _Tags()


def broker_errors() -> tuple[type[BaseException], ...]:
    """What a failed push raises: Redis's errors and socket errors."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)


@functools.cache
def _client(url: str, timeout: float) -> redis.Redis:
    import redis  # imported on first publish: commands that never publish start faster

    return redis.Redis.from_url(
        url.replace("redis+socket://", "unix://", 1),
        socket_connect_timeout=timeout,
        socket_timeout=max(timeout, 5.0),
        socket_keepalive=True,
        health_check_interval=10,
    )


def push(url: str, messages: Sequence[tuple[str, str]], *, timeout: float, batch: int = 1000) -> int:
    """LPUSH ``(key, message)`` pairs, ``batch`` per round trip; returns how many were sent.

    Raises ``redis.RedisError`` (or ``OSError``) if Redis fails before the
    first batch went through; a later failure returns the count sent so far.
    """
    client = _client(url, timeout)
    sent = 0
    for start in range(0, len(messages), batch):
        chunk = messages[start : start + batch]
        by_key: dict[str, list[str]] = {}
        for key, message in chunk:
            by_key.setdefault(key, []).append(message)
        try:
            pipe = client.pipeline(transaction=False)
            for key, values in by_key.items():
                # One LPUSH of many values keeps their order: the first is consumed first.
                pipe.lpush(key, *values)
            pipe.execute()
        except broker_errors():
            if sent == 0:
                raise
            return sent
        sent += len(chunk)
    return sent
