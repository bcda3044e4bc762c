"""The stall watchdog's decision: when a quiet worker is stalled, and what it does then."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker import state as worker_state

from jobs import broker
from jobs.settings import get_settings
from workers import watchdog
from workers.watchdog import Receipts, StallWatchdog

TIMEOUT = 30.0


class Consumer(SimpleNamespace):
    """The parts of Celery's consumer the watchdog reads, and its ``call_soon`` queue."""

    def __init__(self, prefetch: int = 2, queues: tuple[str, ...] = ("default",)) -> None:
        super().__init__(
            task_consumer=SimpleNamespace(queues=[SimpleNamespace(name=name) for name in queues]),
            qos=SimpleNamespace(value=prefetch),
            soon=[],
        )

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)


class Busy:
    """A request the worker holds (the worker's state keeps weak references to them)."""


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The signals the watchdog sends (recorded, never delivered: it would stop the test run)."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


@pytest.fixture
def waiting(monkeypatch: pytest.MonkeyPatch, killed: list[tuple[int, int]]) -> Iterator[dict[str, int]]:
    """Messages in Redis per queue, as the watchdog will read them."""
    ready = {"default": 5}
    monkeypatch.setattr(broker, "ready_messages", lambda _client, queues: {q: ready[q] for q in queues})
    monkeypatch.setattr(StallWatchdog, "_redis", lambda self: None)
    monkeypatch.setenv("JOBS_WORKER_STALL_TIMEOUT", str(TIMEOUT))
    get_settings.cache_clear()
    yield ready
    get_settings.cache_clear()


def make(c: Consumer) -> StallWatchdog:
    step = StallWatchdog(c)
    step.since = 0.0
    return step


def test_waiting_messages_room_and_nothing_received_for_the_timeout_reconnects(
    waiting: dict[str, int],
) -> None:
    c = Consumer()
    step = make(c)
    step.check(c, 10.0)
    step.check(c, 20.0)
    assert c.soon == []
    step.check(c, 30.0)
    assert c.soon == [step._reconnect]
    with pytest.raises(Exception, match="stall watchdog"):
        step._reconnect()


def test_a_received_message_restarts_the_clock(waiting: dict[str, int]) -> None:
    c = Consumer()
    step = make(c)
    step.check(c, 20.0)
    Receipts.add()
    step.check(c, 29.0)  # received since the last look: the clock starts again here
    step.check(c, 40.0)
    assert c.soon == []
    step.check(c, 59.0)
    assert c.soon == [step._reconnect]


def test_a_full_worker_or_empty_queues_are_not_a_stall(waiting: dict[str, int]) -> None:
    c = Consumer(prefetch=1)
    step = make(c)
    busy = Busy()  # held here: the set only keeps weak references
    worker_state.reserved_requests.add(busy)
    try:
        step.check(c, 100.0)  # every process is busy: taking nothing is right
    finally:
        worker_state.reserved_requests.clear()
    waiting["default"] = 0
    step.check(c, 200.0)  # nothing waits
    waiting["default"] = 5
    step.check(c, 210.0)
    assert c.soon == []
    c.task_consumer = None  # reconnecting: Celery is on it already
    step.check(c, 300.0)
    assert c.soon == []


def test_a_stopping_worker_is_not_a_stall(waiting: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    c = Consumer()
    step = make(c)
    monkeypatch.setattr(worker_state, "should_terminate", 0)  # SIGTERM/SIGQUIT: a shutdown began
    step.check(c, 10.0)
    step.check(c, 100.0)  # messages wait and nothing is taken, for the shutdown's whole window
    assert c.soon == []
    monkeypatch.setattr(worker_state, "should_terminate", None)
    step.check(c, 110.0)
    step.check(c, 200.0)
    assert c.soon == [step._reconnect]


def test_a_consumer_that_does_not_reconnect_gets_its_worker_stopped(
    waiting: dict[str, int], killed: list[tuple[int, int]]
) -> None:
    sent = killed
    c = Consumer()
    step = make(c)
    step.check(c, 30.0)
    assert c.soon
    assert not sent
    step.check(c, 45.0)  # the event loop has not run the reconnect yet
    assert not sent
    step.check(c, 60.0)
    assert sent == [(os.getpid(), signal.SIGTERM)]
    assert step.stopping.is_set()
    # A worker whose shutdown hangs too is killed past its soft shutdown's window.
    assert step.killer is not None
    step.killer.cancel()  # (it would fire in this process)
    assert step.killer.interval == step.settings.worker_soft_shutdown_timeout + watchdog.KILL_AFTER
    step._kill(step.killer.interval)
    assert sent == [(os.getpid(), signal.SIGTERM), (os.getpid(), signal.SIGKILL)]


def test_a_reconnected_consumer_starts_afresh(waiting: dict[str, int]) -> None:
    c = Consumer()
    step = make(c)
    step.timeout = 0  # no thread in a unit test
    step.check(c, 30.0)
    assert step.asked == 30.0
    step.start(c)  # Celery restarts the consumer's steps after the reconnection
    assert step.asked is None
