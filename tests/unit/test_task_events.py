"""``workers.events``: task events are turned off once nobody has asked for them for ``LINGER`` s."""

from __future__ import annotations

import time
from typing import Any

import pytest

from workers import events


class FakeConsumer:
    """What ``ListenedEvents`` reads of Celery's consumer: its event dispatcher's groups."""

    def __init__(self, groups: set[str] | None) -> None:
        self.event_dispatcher: Any = type("Dispatcher", (), {"groups": groups})()
        self.timer = None


@pytest.mark.parametrize(
    ("asked_ago", "before", "after"),
    [
        (None, {"worker", "task"}, {"worker"}),  # never asked (on at start by a remote, say): off
        (events.LINGER + 1, {"worker", "task"}, {"worker"}),  # asked, too long ago: off
        (1.0, {"worker", "task"}, {"worker", "task"}),  # asked lately: stays on
        (None, {"worker"}, {"worker"}),  # off already: nothing to do
    ],
)
def test_task_events_follow_the_last_ask(asked_ago: float | None, before: set[str], after: set[str]) -> None:
    consumer = FakeConsumer(set(before))
    step = events.ListenedEvents(consumer)
    if asked_ago is not None:
        step.asked_at = time.monotonic() - asked_ago
    step.check(consumer)
    assert consumer.event_dispatcher.groups == after


def test_the_enable_events_command_is_remembered_and_still_enables() -> None:
    consumer = FakeConsumer({"worker"})
    step = events.ListenedEvents(consumer)
    state = type("State", (), {"consumer": consumer})()
    reply = events.enable_events(state)
    assert consumer.event_dispatcher.groups == {"worker", "task"}
    assert "enabled" in str(reply)
    assert time.monotonic() - step.asked_at < 5
    step.check(consumer)
    assert consumer.event_dispatcher.groups == {"worker", "task"}
