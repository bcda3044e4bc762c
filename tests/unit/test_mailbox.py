"""``workers.mailbox``: which remote-control commands a batched process answers while its body runs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.control import Panel

from jobs.app import get_app
from workers import mailbox
from workers.pauses import REFRESH_COMMAND

pytestmark = pytest.mark.unit

control: Any = get_app().control
REPLY_TO = {"exchange": "reply.celery.pidbox", "routing_key": "r"}


class Recorded(mailbox.Node):
    """A node with its replies kept here instead of published."""

    def __init__(self, handlers: dict[str, Any], wanted: Callable[[str], bool]) -> None:
        super().__init__(
            "w1@host", state=SimpleNamespace(), handlers=handlers, mailbox=control.mailbox, wanted=wanted
        )
        self.sent: list[tuple[Any, str | None]] = []

    def reply(self, data: Any, exchange: str, routing_key: str, ticket: str | None, **_: Any) -> None:
        self.sent.append((data, ticket))


def handlers(calls: list[str]) -> dict[str, Any]:
    def handler(name: str) -> Any:
        def handle(state: Any, **arguments: Any) -> Any:
            calls.append(name)
            return {"ok": name}

        return handle

    return {name: handler(name) for name in COMMANDS}


COMMANDS = (
    "ping",
    "stats",
    "active",
    "hello",
    "heartbeat",
    REFRESH_COMMAND,
    "add_consumer",
    "revoke",
    "shutdown",
)


def test_each_command_is_answered_once_by_one_of_the_two_listeners() -> None:
    thread_calls: list[str] = []
    consumer_calls: list[str] = []
    in_thread = Recorded(handlers(thread_calls), mailbox.answered_in_thread)
    in_consumer = Recorded(handlers(consumer_calls), lambda method: not mailbox.answered_in_thread(method))
    for method in COMMANDS:  # a broadcast reaches both listeners
        for node in (in_thread, in_consumer):
            node.handle_message({"method": method, "arguments": {}, "reply_to": REPLY_TO, "ticket": method})
    # Reading (inspect) and flag-setting commands: the thread, at once, even while a body runs.
    assert thread_calls == ["ping", "stats", "active", "hello", "heartbeat", REFRESH_COMMAND]
    # Commands that change the consumer: Celery's own listener, in the consumer's thread.
    assert consumer_calls == ["add_consumer", "revoke", "shutdown"]
    assert [ticket for _, ticket in in_thread.sent] == thread_calls
    assert [ticket for _, ticket in in_consumer.sent] == consumer_calls
    assert Panel.meta["ping"].type == "inspect"  # what the split rests on


def test_a_running_body_is_listed_as_active_and_counted() -> None:
    job = uuid.uuid4()
    message = SimpleNamespace(
        headers={"argsrepr": "()", "kwargsrepr": "{'n': 1}"}, delivery_info={"routing_key": "default"}
    )
    item: Any = SimpleNamespace(job_id=job, task=SimpleNamespace(name="ping"), message=message)
    state = SimpleNamespace(tset=set)
    before = mailbox.active(state)
    with mailbox.running(item, "w1@host"):
        listed = mailbox.active(state)
    assert [entry["id"] for entry in listed if entry not in before] == [str(job)]
    assert listed[-1]["kwargs"] == "{'n': 1}"
    assert listed[-1]["hostname"] == "w1@host"
    assert mailbox.active(state) == before
    assert Panel.data["active"] is mailbox.active  # the command Celery answers `inspect active` with
