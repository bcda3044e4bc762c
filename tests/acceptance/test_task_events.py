"""Task events only while an event consumer asks for them (``workers.events``), with a real worker.

A worker in the default mode (``JOBS_WORKER_TASK_EVENTS=auto``) sends its
``worker-*`` heartbeats always, and the per-job task events (what Flower shows)
only from when someone sends ``enable_events``, as Flower does every 5 seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.producer import Producer
from tests.support.fixtures import Processes, wait_for_state
from tests.support.task_events import TaskEvents

pytestmark = pytest.mark.acceptance

WORKER_SIDE = {"task-received", "task-started", "task-succeeded"}


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Processes, str]]:
    node = f"events-{uuid.uuid4().hex[:8]}"
    started = Processes(tmp_path)
    try:
        started.start("worker", "worker", "-c", "1", "-n", f"{node}@%h", "-l", "INFO")
        started.wait_log("worker", "ready.", timeout=60)
        yield started, node
    finally:
        started.stop_all()


def heartbeat_after(events: TaskEvents, node: str, moment: float, timeout: float = 30.0) -> None:
    """Wait for a heartbeat of ``node`` sent after ``moment``: the worker's events are published in
    order, so an event it sent before that heartbeat would have arrived already."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            event["type"] == "worker-heartbeat" and node in event["hostname"] and event["timestamp"] > moment
            for event in list(events.events)
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"no heartbeat of {node} after {moment} in {timeout}s")


def test_task_events_are_sent_while_an_event_consumer_asks_for_them(worker, producer: Producer) -> None:
    processes, node = worker
    with TaskEvents(producer.settings) as events:
        unasked = producer.submit("ping", {"message": "nobody listens"})
        wait_for_state(producer.settings, unasked, ("succeeded",), timeout=60)
        heartbeat_after(events, node, time.time())
        assert WORKER_SIDE.isdisjoint(events.of(unasked)), events.of(unasked)

        events.app.control.enable_events()  # what Flower does every 5 s
        processes.wait_log("worker", "Events of group {task} enabled by remote", timeout=30)
        asked = producer.submit("ping", {"message": "Flower listens"})
        wait_for_state(producer.settings, asked, ("succeeded",), timeout=60)
        deadline = time.monotonic() + 30
        while "task-succeeded" not in events.of(asked) and time.monotonic() < deadline:
            time.sleep(0.1)
        seen = [kind for kind in events.of(asked) if kind in WORKER_SIDE]
        assert seen == ["task-received", "task-started", "task-succeeded"], events.of(asked)
