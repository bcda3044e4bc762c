"""The worker's Redis transport: kombu's, except that a malformed item on a queue cannot kill it.

kombu's Redis transport pops an item off a queue's list (``BRPOP``) and
parses it as its JSON envelope in the consumer's event loop. An item that is
not that envelope (not JSON, an empty string, a JSON list, an object without
``properties``) raises there, and Celery stops the worker with
"Unrecoverable error": anyone who can write to Redis could stop the fleet, one
item per worker, and each such item would be lost with the worker.

This transport checks every popped item before kombu parses it. A malformed
one is moved to the bounded Redis list ``jobs.quarantine`` (the newest
``QUARANTINE_KEEP`` items, each cut to ``QUARANTINE_ITEM_BYTES``), counted in
``jobs.quarantined``, and logged once with its size and first bytes, never in
full; the worker goes on with the next message. ``jobs doctor`` and
``jobs metrics`` report the quarantine. Items that are well-formed envelopes
with a bad body (not JSON, a pickle, no task headers) are Celery's business as
before: refused, acknowledged, and recorded where they carry a job id.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

from jobs import broker

__all__ = ["Channel", "Transport", "install", "malformed"]

log = logging.getLogger("jobs.worker.transport")

#: The envelope's body encodings kombu's Redis transport can decode.
_ENCODINGS = (None, "", "base64")


def malformed(item: bytes | str) -> str | None:
    """Why kombu could not take this item as a message envelope, or ``None`` if it can."""
    try:
        payload = json.loads(item)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "no properties object"
    return _properties_problem(properties) or _body_problem(payload.get("body"), properties)


def _properties_problem(properties: dict[str, Any]) -> str | None:
    tag = properties.get("delivery_tag")
    if isinstance(tag, bool) or not isinstance(tag, str | int):
        return "no delivery tag"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        return "no delivery info"
    return None


def _body_problem(body: Any, properties: dict[str, Any]) -> str | None:
    if body is not None and not isinstance(body, str):
        return "a body that is not a string"
    encoding = properties.get("body_encoding")
    if encoding not in _ENCODINGS:
        return f"an unknown body encoding {str(encoding)[:40]!r}"
    if body and encoding == "base64":
        try:
            base64.b64decode(body)
        except (binascii.Error, ValueError):
            return "a body that is not base64"
    return None


class Channel(kombu_redis.Channel):
    """kombu's Redis channel with every popped item checked before it is parsed, and one client
    object for its non-blocking commands."""

    _shared: Any = None

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu builds a new ``redis.Redis`` object for every ack, every unacked-message record and
        every event it publishes (about a tenth of a worker's main process per message). A client
        object holds no connection of its own (each command takes one from the channel's pool), so
        one per channel serves them all; it is made again if kombu replaces the pool."""
        if client:
            yield client
            return
        shared = self._shared
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared = self._create_client()
        yield shared

    def ack_many(self, delivery_tags: list[Any]) -> None:
        """Acknowledge several messages in one round trip (``workers.recording``, a batch's
        finish): the same removals as kombu's ``basic_ack`` makes for each (its unacknowledged
        record and index entry), in one pipeline, then kombu's own bookkeeping."""
        qos: Any = self.qos  # kombu's Redis QoS (its stubs type the virtual one)
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            for tag in delivery_tags:
                qos._remove_from_indices(tag, pipe)
            pipe.execute()
        for tag in delivery_tags:
            kombu_virtual.QoS.ack(qos, tag)

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu's stubs leave out this (private, stable since kombu 4) method.
        client = super()._create_client(asynchronous=asynchronous)  # type: ignore[misc]
        if asynchronous:  # the client that runs BRPOP
            parse = client.parse_response

            def parse_response(connection: Any, command_name: str, **options: Any) -> Any:
                reply = parse(connection, command_name, **options)
                if command_name == "BRPOP" and reply:
                    return self._checked(reply)
                return reply

            client.parse_response = parse_response
        return client

    def _checked(self, reply: Any) -> Any:
        """The ``BRPOP`` reply if its item is an envelope; else ``None`` (kombu: nothing popped)."""
        dest, item = reply
        why = malformed(item)
        if why is None:
            return reply
        queue = (dest.decode(errors="replace") if isinstance(dest, bytes) else str(dest)).rsplit(self.sep, 1)[
            0
        ]
        raw = item if isinstance(item, bytes) else str(item).encode(errors="replace")
        try:
            with self.conn_or_acquire() as client:
                broker.quarantine(client, raw)
            where = f"moved to the Redis list {broker.QUARANTINE}"
        except Exception as error:  # Redis failed now: the item is lost, but the worker is not
            where = f"NOT kept: Redis failed ({error})"
        log.error(
            "quarantined a malformed item from queue %s: %s (%d bytes, starting %r); %s",
            queue,
            why,
            len(raw),
            raw[:64],
            where,
        )
        return None


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ``Channel`` above."""

    Channel = Channel


def install() -> None:
    """Make ``redis://`` and ``rediss://`` URLs use this transport in this process (the worker's).

    kombu resolves a URL's scheme through its alias table, so every connection the worker makes
    (consumer, events, remote control) gets it, and Celery's log still says ``redis://``.
    """
    from kombu.transport import TRANSPORT_ALIASES

    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
