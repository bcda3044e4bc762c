"""The batched profiles with workers of their own: SIGTERM's window, hand-backs, memory
recycling, jobs behind a long body.

SIGTERM's window runs for ``jobs worker -P batched`` and ``jobs worker --batches`` alike."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
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
    handed_back = {
        "batched": "5 claimed job(s) not started: handed back to their queues",
        # --batches hands them back as the long body passes half a second, before the SIGTERM.
        "pooled": "5 job(s) waiting behind it in its batch handed back to their queues",
    }
    assert handed_back[profile] in log
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


def test_jobs_behind_a_long_body_in_a_pool_batch_run_in_the_other_pool_process(
    processes, producer, clean, tmp_path: Path
):
    """``--batches``: a batch's jobs run one after the other in its pool process; once a body
    runs long, the jobs waiting behind it are withdrawn (no attempt spent) and run in the other
    pool process, as per-job prefork would run them, while the long body goes on."""
    gate = tmp_path / "gate"
    # Queued before the worker starts, with a wide window: after the first message (alone, as
    # always), the gate and the pings behind it form one batch, claimed together.
    first = producer.submit("ping", {})
    long = producer.submit("test.gate", {"path": str(gate), "seconds": 60})
    behind = producer.submit_many("ping", [{}] * 5, max_attempts=1)
    env = {"JOBS_WORKER_BATCH_WINDOW": "0.5"}
    processes.start("worker", "worker", "-P", "prefork", "--batches", "-c", "2", "-l", "INFO", env=env)
    try:
        rows = [wait_for_state(clean, job_id, timeout=60) for job_id in [first, *behind]]
        assert {(row["state"], row["attempt"]) for row in rows} == {("succeeded", 1)}
        assert Path(f"{gate}.started").exists()
        assert wait_for_state(clean, long, ("running",), timeout=5)["state"] == "running"  # still
        processes.wait_log(
            "worker", "runs long: 5 job(s) waiting behind it in its batch handed back", timeout=10
        )
    finally:
        gate.write_text("open")
    done = wait_for_state(clean, long, timeout=30)
    assert (done["state"], done["attempt"]) == ("succeeded", 1)


def test_sigquit_hands_a_body_running_in_the_pool_back_at_once(processes, producer, clean, broker):
    """``--batches``: the cold shutdown (SIGQUIT, a second Ctrl-C) stops the pool processes that
    run batches and hands their jobs back at once, as the per-job path hands back a running job:
    its lease released, its message back on its queue for the next worker."""
    processes.start("worker", *PROFILES["pooled"][0], env={"JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "0"})
    wait_ready(processes, "worker", 1)
    job = producer.submit("test.work", {"key": "cold", "sleep": 60.0})
    wait_for_state(clean, job, ("running",), timeout=30)
    worker = processes.running["worker"]
    started = time.monotonic()
    os.kill(worker.pid, signal.SIGQUIT)  # the main process only, as a second Ctrl-C reaches it
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - started < 15, "the body was waited for"
    row = wait_for_state(clean, job, ("running",), timeout=5)
    assert row["lease_until"] <= datetime.now(UTC), "the lease was released"
    assert "the worker's cold shutdown stopped it; lease released" in processes.log("worker")
    queued = [key for key in broker.scan_iter(count=1000) if broker.type(key) == b"list"]
    assert sum(str(job).encode() in m for key in queued for m in broker.lrange(key, 0, -1)) == 1
    assert effects(clean, "cold") == []
