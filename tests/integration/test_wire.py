"""The fast publishing path writes exactly what kombu's own Redis publisher writes."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis

from jobs import wire
from jobs.app import get_app

pytestmark = pytest.mark.integration


def decoded(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


@pytest.mark.parametrize("priority", [0, 7])
def test_wire_message_matches_kombus(clean, broker, priority):
    job_id = uuid.uuid4()
    payload = {"message": "ünïcode", "n": 1}
    get_app().send_task(
        "ping",
        kwargs=payload,
        task_id=str(job_id),
        queue="wirecheck",
        priority=priority,
        kwargsrepr=repr(payload),
    )
    key = wire.queue_key("wirecheck", priority)
    theirs = decoded(broker.rpop(key))
    wire.push(
        clean.broker_url,
        [(key, wire.encode(job_id, "ping", "wirecheck", priority, json.dumps(payload), repr(payload)))],
        timeout=2,
    )
    ours = decoded(broker.rpop(key))

    assert ours["body"] == theirs["body"]
    assert ours["content-type"] == theirs["content-type"]
    assert ours["content-encoding"] == theirs["content-encoding"]
    # "timelimit" is left out: kombu copies a registered task's limits, the worker applies them anyway.
    for header in ("lang", "task", "id", "root_id", "retries", "argsrepr", "kwargsrepr", "eta"):
        assert ours["headers"][header] == theirs["headers"][header], header
    assert set(ours["headers"]) == set(theirs["headers"])
    for prop in ("correlation_id", "delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][prop] == theirs["properties"][prop], prop


def test_push_reports_an_unreachable_broker():
    with pytest.raises(redis.ConnectionError, match="Connection refused"):
        wire.push("redis://127.0.0.1:1/11", [("q", "{}")], timeout=0.5)
