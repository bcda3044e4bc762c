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
    """The node with its replies kept here instead of published."""

    def __init__(self, handlers: dict[str, Any], soon: list[Callable[[], None]]) -> None:
        super().__init__(
            "w1@host",
            state=SimpleNamespace(),
            handlers=handlers,
            mailbox=control.mailbox,
            call_soon=soon.append,
        )
        self.sent: list[tuple[Any, str | None]] = []

    def reply(self, data: Any, exchange: str, routing_key: str, ticket: str | None, **_: Any) -> None:
        self.sent.append((data, ticket))


def handlers(calls: list[str]) -> dict[str, Any]:
    def handler(name: str) -> Any:
        def handle(state: Any, **arguments: Any) -> Any:
            calls.append(name)
            if arguments.get("fail"):
                raise ValueError("no such queue")
            return {"ok": name}

        return handle

    return {name: handler(name) for name in ("ping", "stats", "add_consumer", "revoke", REFRESH_COMMAND)}


def test_reading_and_flag_commands_are_answered_in_the_listening_thread() -> None:
    calls: list[str] = []
    soon: list[Callable[[], None]] = []
    node = Recorded(handlers(calls), soon)
    for method in ("ping", "stats", REFRESH_COMMAND):
        node.dispatch(method, {}, reply_to=REPLY_TO, ticket=method)
    assert calls == ["ping", "stats", REFRESH_COMMAND]
    assert [ticket for _, ticket in node.sent] == ["ping", "stats", REFRESH_COMMAND]
    assert soon == []
    assert Panel.meta["ping"].type == "inspect"  # what the split rests on


def test_commands_that_change_the_consumer_run_in_its_thread_and_their_replies_follow() -> None:
    calls: list[str] = []
    soon: list[Callable[[], None]] = []
    node = Recorded(handlers(calls), soon)
    node.dispatch("add_consumer", {"queue": "q"}, reply_to=REPLY_TO, ticket="add")
    node.dispatch("revoke", {"fail": True}, reply_to=REPLY_TO, ticket="revoke")
    node.dispatch("add_consumer", {"queue": "q"})  # no reply wanted
    assert calls == []  # nothing ran in the listening thread
    assert node.sent == []
    for run in soon:  # the consumer's thread, between two bodies
        run()
    assert calls == ["add_consumer", "revoke", "add_consumer"]
    assert node.sent == []  # replies go out from the listening thread ...
    node.send_replies()
    assert node.sent == [
        ({"w1@host": {"ok": "add_consumer"}}, "add"),
        ({"w1@host": {"error": "ValueError('no such queue')"}}, "revoke"),
    ]
    node.send_replies()  # ... once
    assert len(node.sent) == 2


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
