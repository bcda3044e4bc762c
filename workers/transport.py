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

In a batched worker (``pop_many``), the consumer takes the messages behind the one ``BRPOP``
returned, up to its prefetch count, in one more round trip: a Lua script (``POP_MORE``) pops
them off the same queue (highest priority first) and records each as unacknowledged, in
kombu's own format, atomically. kombu pops one message per ``BRPOP`` and records it with a
second round trip; a batch of 32 took 64 round trips and now takes two. The script stops at
the first item it cannot read as an envelope and leaves it on the queue: ``BRPOP`` takes it
next, and the check above quarantines it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from jobs import broker

__all__ = ["POP_MORE", "Channel", "QoS", "Transport", "install", "malformed"]

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


#: Pop up to ARGV[1] envelopes off the lists KEYS[3..] (in that order) and record each as
#: unacknowledged at time ARGV[2], as kombu's ``QoS.append`` does: index KEYS[2] (delivery tag ->
#: time) and hash KEYS[1] (delivery tag -> ``[envelope, exchange, routing key]``). Stops at the
#: first item that is not an envelope with a delivery tag and delivery info, leaving it queued.
#: Returns ``[tag, envelope, tag, envelope, ...]``.
POP_MORE = """
local taken = {}
local wanted = 2 * tonumber(ARGV[1])
for i = 3, #KEYS do
  while #taken < wanted do
    local item = redis.call('LINDEX', KEYS[i], -1)
    if not item then break end
    local ok, envelope = pcall(cjson.decode, item)
    if not ok or type(envelope) ~= 'table' or type(envelope.properties) ~= 'table' then return taken end
    local tag = envelope.properties.delivery_tag
    local info = envelope.properties.delivery_info
    if type(tag) ~= 'string' or type(info) ~= 'table' or type(info.exchange) ~= 'string'
        or type(info.routing_key) ~= 'string' then
      return taken
    end
    redis.call('RPOP', KEYS[i])
    redis.call('ZADD', KEYS[2], ARGV[2], tag)
    redis.call('HSET', KEYS[1], tag,
      '[' .. item .. ',' .. cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
    taken[#taken + 1] = tag
    taken[#taken + 1] = item
  end
end
return taken
"""


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS; a message ``POP_MORE`` already recorded as unacknowledged is not
    recorded again."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        channel: Any = self.channel  # this module's Channel (kombu's stubs type the virtual one)
        recorded: set[Any] = channel.recorded
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            kombu_virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel with every popped item checked before it is parsed, one client
    object for its non-blocking commands, and (``pop_many``) several messages per round trip."""

    QoS = QoS
    _kombu: Any = kombu_redis.Channel  # its private methods, which kombu's stubs leave out
    _shared: Any = None
    #: Take the messages behind the one ``BRPOP`` returned, up to the prefetch count, in one more
    #: round trip (``POP_MORE``). Set by the batched worker (``workers.batching.install``).
    pop_many = False
    _popped_from: str | None = None
    _pop_more_script: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: set[Any] = set()

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

    def _brpop_read(self, **options: Any) -> Any:
        try:
            delivered = self._kombu._brpop_read(self, **options)  # _checked notes the queue it popped
        finally:
            queue, self._popped_from = self._popped_from, None
        if self.pop_many and queue is not None:
            self._pop_more(queue)
        return delivered

    def _pop_more(self, queue: str) -> None:
        """Deliver the messages behind the one just popped off ``queue``, as many as the prefetch
        count still allows, popped and recorded in one round trip."""
        qos: Any = self.qos
        room = qos.can_consume_max_estimate()
        if not room or room <= 0:
            return
        keys = [self.unacked_key, self.unacked_index_key]
        keys += [self._kombu._q_for_pri(self, queue, priority) for priority in self.priority_steps]
        try:
            with self.conn_or_acquire() as client:
                if self._pop_more_script is None or self._pop_more_script.registered_client is not client:
                    self._pop_more_script = client.register_script(POP_MORE)
                items = self._pop_more_script(keys=keys, args=[room, time.time()])
        except self._kombu.connection_errors:
            raise
        except Exception as error:  # a Redis without Lua (or a script error): one BRPOP at a time
            log.warning("could not pop several messages at once (%s); taking them one by one", error)
            self.pop_many = False
            return
        taken = [(bytes_to_str(tag), item) for tag, item in zip(items[::2], items[1::2], strict=True)]
        for index, (tag, item) in enumerate(taken):
            why = malformed(item)
            if why is not None:  # popped and recorded: quarantined, and its record removed
                self._quarantine(queue, item, why)
                with self.conn_or_acquire() as client:
                    pipe = client.pipeline()
                    qos._remove_from_indices(tag, pipe)
                    pipe.execute()
                continue
            self.recorded.add(tag)
            try:
                self.connection._deliver(loads(bytes_to_str(item)), queue)
            except BaseException:
                self.recorded.discard(tag)
                for rest, _ in taken[index + 1 :]:  # not delivered: back at the head of the queue
                    qos.restore_by_tag(rest, leftmost=True)
                raise

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
        queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
        why = malformed(item)
        if why is None:
            self._popped_from = queue
            return reply
        self._quarantine(queue, item, why)
        return None

    def _quarantine(self, queue: str, item: bytes | str, why: str) -> None:
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
