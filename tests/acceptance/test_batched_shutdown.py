"""The batched profiles stopping: SIGTERM's window, hand-backs, memory recycling (own workers).

SIGTERM's window runs for ``jobs worker -P batched`` and ``jobs worker --batches`` alike."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.acceptance.test_batched_worker import BATCHED, PROFILES, wait_ready
from tests.support.fixtures import effects, wait_for_state

pytestmark = pytest.mark.acceptance


@pytest.fixture(params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_sigterm_lets_a_running_body_finish_within_the_window(processes, producer, clean, profile):
    argv, ready = PROFILES[profile]
    processes.start("worker", *argv, env={"JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "10"})
    wait_ready(processes, "worker", ready)
    job = producer.submit("test.work", {"key": "batched-finish", "sleep": 1.5})
    wait_for_state(clean, job, ("running",), timeout=30)
    assert processes.stop("worker", signal.SIGTERM, timeout=30) == 0
    row = wait_for_state(clean, job, timeout=5)
    assert (row["state"], row["attempt"]) == ("succeeded", 1)
    assert [effect["attempt"] for effect in effects(clean, "batched-finish")] == [1]


def test_sigterm_hands_back_a_body_that_outlives_the_window(
    processes, producer, clean, tmp_path: Path, profile
):
    gate = tmp_path / "gate"
    # Queued before the worker starts, with a wide window: after the first message (alone, as
    # always), the gate and the pings behind it form one batch, claimed together.
    first = producer.submit("ping", {})
    long = producer.submit("test.gate", {"path": str(gate), "seconds": 30})
    behind = producer.submit_many("ping", [{}] * 5)
    env = {"JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "1", "JOBS_WORKER_BATCH_WINDOW": "0.5"}
    one = {"batched": ("-P", "batched"), "pooled": ("-P", "prefork", "--batches")}[profile]
    processes.start("worker", "worker", *one, "-c", "1", "-l", "INFO", env=env)
    deadline = time.monotonic() + 60
    while not Path(f"{gate}.started").exists():
        assert time.monotonic() < deadline, processes.log("worker")[-3000:]
        time.sleep(0.05)
    started = time.monotonic()
    assert processes.stop("worker", signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 15
    log = processes.log("worker")
    assert "the worker's soft shutdown expired while it ran; lease released" in log
    assert "5 claimed job(s) not started: handed back to their queues" in log
    assert wait_for_state(clean, first)["state"] == "succeeded"
    assert wait_for_state(clean, long, ("running",), timeout=5)["state"] == "running"
    for job_id in behind:  # queued again, their attempt undone
        assert wait_for_state(clean, job_id, ("queued",), timeout=5)["attempt"] == 0

    gate.write_text("open")
    processes.start("worker-2", *BATCHED)
    wait_ready(processes, "worker-2", 2)
    done = wait_for_state(clean, long, timeout=30)
    assert (done["state"], done["attempt"]) == ("succeeded", 2)  # attempt 1 was stopped
    assert {
        (row["state"], row["attempt"]) for row in (wait_for_state(clean, j, timeout=30) for j in behind)
    } == {("succeeded", 1)}


def test_a_worker_process_past_its_memory_limit_is_recycled(processes, producer, clean):
    processes.start("worker", *BATCHED, env={"JOBS_WORKER_MAX_MEMORY_PER_CHILD": "1"})
    wait_ready(processes, "worker", 2)
    first = producer.submit("ping", {})
    assert wait_for_state(clean, first, timeout=30)["state"] == "succeeded"
    processes.wait_log("worker", "past JOBS_WORKER_MAX_MEMORY_PER_CHILD", timeout=30)
    processes.wait_log("worker", "stopped; starting a new one", timeout=30)
    wait_ready(processes, "worker", 3)
    assert wait_for_state(clean, producer.submit("ping", {}), timeout=60)["state"] == "succeeded"
