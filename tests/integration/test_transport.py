"""``workers.transport`` against the real Redis: several messages per round trip (``pop_many``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from jobs import broker as broker_side
from jobs.settings import Settings
from workers import transport

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(settings: Settings, broker: redis.Redis) -> Iterator[Queue]:
    name = f"pop-many-{uuid.uuid4().hex[:8]}"
    yield Queue(name, Exchange(name, type="direct"), routing_key=name)
    broker.delete(name, *(f"{name}\x06\x16{priority}" for priority in (3, 6, 9)))


def publish(settings: Settings, queue: Queue, count: int, start: int = 0) -> None:
    with Connection(settings.broker_url) as connection:
        producer = Producer(connection)
        for n in range(start, start + count):
            producer.publish(
                {"n": n}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
            )


def consume(settings: Settings, queue: Queue, prefetch: int, drains: int, ack: bool = True) -> list[Any]:
    """Drain ``drains`` times with ``pop_many`` on; returns the payloads received, acknowledged
    (or with ``ack=False``, handed back as the connection closes)."""
    received: list[Any] = []
    with Connection(settings.broker_url, transport=transport.Transport) as connection:
        channel: Any = connection.default_channel
        channel.pop_many = True
        consumer = Consumer(channel, [queue], callbacks=[lambda body, message: received.append(message)])
        consumer.qos(prefetch_count=prefetch)
        with consumer:
            for _ in range(drains):
                try:
                    connection.drain_events(timeout=2)
                except TimeoutError:
                    break
            for message in received if ack else ():
                message.ack()
    return [message.payload for message in received]


def test_the_messages_behind_the_first_come_in_one_more_round_trip(settings, broker, queue):
    publish(settings, queue, 10)
    received: list[Any] = []
    with Connection(settings.broker_url, transport=transport.Transport) as connection:
        channel: Any = connection.default_channel
        channel.pop_many = True
        consumer = Consumer(channel, [queue], callbacks=[lambda body, message: received.append(message)])
        consumer.qos(prefetch_count=6)
        with consumer:
            connection.drain_events(timeout=5)  # one BRPOP: its message and the five behind it
            assert [message.payload["n"] for message in received] == [0, 1, 2, 3, 4, 5]
            assert broker.llen(queue.name) == 4
            # Each is recorded as unacknowledged exactly as kombu records the one BRPOP took.
            for message in received:
                envelope, exchange, routing_key = json.loads(broker.hget("unacked", message.delivery_tag))
                assert envelope["properties"]["delivery_tag"] == message.delivery_tag
                assert (exchange, routing_key) == (queue.name, queue.name)
                assert broker.zscore("unacked_index", message.delivery_tag) is not None
            received[0].ack()
            received[1].reject(requeue=True)  # kombu's own restore reads the record back
            assert broker.hget("unacked", received[0].delivery_tag) is None
            assert broker.llen(queue.name) == 5
            for message in received[2:]:
                message.ack()
            assert not any(broker.hexists("unacked", message.delivery_tag) for message in received)
    # What is left comes back in order, the requeued one first (kombu restores at the head).
    assert sorted(body["n"] for body in consume(settings, queue, prefetch=10, drains=3)) == [1, 6, 7, 8, 9]


def test_an_item_that_is_not_an_envelope_stops_the_pop_and_is_quarantined(settings, broker, queue):
    broker.delete(broker_side.QUARANTINE, broker_side.QUARANTINED)
    publish(settings, queue, 2)
    # An envelope the script can read (tag, delivery info) in an encoding kombu cannot decode:
    # popped and recorded, then quarantined by the worker's check, its record removed.
    tag = str(uuid.uuid4())
    info = {"exchange": queue.name, "routing_key": queue.name}
    unreadable = {
        "body": "",
        "properties": {"delivery_tag": tag, "delivery_info": info, "body_encoding": "rot13"},
    }
    broker.lpush(queue.name, json.dumps(unreadable))
    publish(settings, queue, 1, start=2)
    broker.lpush(queue.name, b"\x00garbage")  # the script stops here; BRPOP takes it next
    publish(settings, queue, 2, start=3)
    assert [body["n"] for body in consume(settings, queue, prefetch=10, drains=4)] == [0, 1, 2, 3, 4]
    held = broker_side.quarantined(broker)
    assert (held.kept, held.total) == (2, 2)
    assert not broker.hexists("unacked", tag)
    assert broker.llen(queue.name) == 0
    broker.delete(broker_side.QUARANTINE, broker_side.QUARANTINED)


def test_the_prefetch_count_bounds_what_is_taken(settings, broker, queue):
    publish(settings, queue, 5)
    assert [body["n"] for body in consume(settings, queue, prefetch=1, drains=1, ack=False)] == [0]
    assert broker.llen(queue.name) == 5  # handed back as its connection closed
    assert [body["n"] for body in consume(settings, queue, prefetch=3, drains=1)] == [0, 1, 2]
    assert broker.llen(queue.name) == 2
