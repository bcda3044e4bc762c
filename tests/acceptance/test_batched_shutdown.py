"""``jobs worker -P batched`` stopping: SIGTERM's window, hand-backs, memory recycling (own workers)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.acceptance.test_batched_worker import BATCHED, wait_ready
from tests.support.fixtures import effects, wait_for_state

pytestmark = pytest.mark.acceptance


def test_sigterm_lets_a_running_body_finish_within_the_window(processes, producer, clean):
    processes.start("worker", *BATCHED, env={"JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "10"})
    wait_ready(processes, "worker", 2)
    job = producer.submit("test.work", {"key": "batched-finish", "sleep": 1.5})
    wait_for_state(clean, job, ("running",), timeout=30)
    assert processes.stop("worker", signal.SIGTERM, timeout=30) == 0
    row = wait_for_state(clean, job, timeout=5)
    assert (row["state"], row["attempt"]) == ("succeeded", 1)
    assert [effect["attempt"] for effect in effects(clean, "batched-finish")] == [1]


def test_sigterm_hands_back_a_body_that_outlives_the_window(processes, producer, clean, tmp_path: Path):
    env = {"JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "1"}
    processes.start("worker", "worker", "-P", "batched", "-c", "1", "-l", "INFO", env=env)
    wait_ready(processes, "worker", 1)
    gate = tmp_path / "gate"
    long = producer.submit("test.gate", {"path": str(gate), "seconds": 30})
    queued = producer.submit_many("ping", [{}] * 5)
    while not Path(f"{gate}.started").exists():
        time.sleep(0.05)
    started = time.monotonic()
    assert processes.stop("worker", signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 15
    assert "soft shutdown expired" in processes.log("worker")
    row = wait_for_state(clean, long, ("running", "queued"), timeout=5)
    assert row["lease_until"] is None or row["state"] == "running"

    gate.write_text("open")
    processes.start("worker-2", *BATCHED)
    wait_ready(processes, "worker-2", 2)
    done = wait_for_state(clean, long, timeout=30)
    assert (done["state"], done["attempt"]) == ("succeeded", 2)  # attempt 1 was stopped
    # The jobs that never started (claimed with it, or still waiting): attempt 1, run once.
    assert {
        (wait_for_state(clean, j, timeout=30)["state"], wait_for_state(clean, j)["attempt"]) for j in queued
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
