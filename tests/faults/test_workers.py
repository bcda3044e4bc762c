"""Scenarios 1-3, 6, 13-15: workers and their pool processes die, stop, hang or leak mid-job."""

from __future__ import annotations

import re
import signal
import time
from datetime import UTC, datetime, timedelta

import psutil
import pytest
import sqlalchemy as sa

from jobs import ledger, publisher
from jobs.schema import jobs
from tests.faults.harness import Platform

pytestmark = pytest.mark.acceptance


def test_01_sigkill_of_the_worker_main_process_mid_task(faults: Platform) -> None:
    job = faults.submit("test.work", {"key": "s1", "sleep": 2.5})
    faults.running_pid(job)
    faults.kill("worker", signal.SIGKILL)
    killed = time.monotonic()
    faults.forget("worker")  # what a supervisor does: the dead worker's group is gone
    faults.start_worker("worker-2")

    row = faults.wait(job, timeout=40)
    recovered = time.monotonic() - killed
    print(f"worker SIGKILL -> job done: {recovered:.1f}s")
    assert (row["state"], row["attempt"]) == ("succeeded", 2)
    assert row["worker"].startswith("worker-2@")
    assert [effect["attempt"] for effect in faults.effects("s1")] == [2]


def test_20_sigkill_of_a_worker_holding_reserved_messages(faults: Platform) -> None:
    """A worker killed while it holds messages it took but never started: every one runs within
    its lease plus a rescuer round, like the job it was running (not after the visibility timeout)."""
    # Production's visibility timeout (an hour) is far beyond the scenario; 600 s keeps kombu's own
    # redelivery out of it, so only the leader can bring the reserved messages back in time.
    slow_redelivery = {"JOBS_VISIBILITY_TIMEOUT": "600"}
    faults.processes.stop("worker")  # the hoarder alone takes the messages
    faults.start_worker("hoarder", "-c", "1", "--prefetch-multiplier", "4", env=slow_redelivery)
    running = faults.submit("test.work", {"key": "s20-0", "sleep": 2.5})
    faults.running_pid(running)
    reserved = [faults.submit("test.work", {"key": f"s20-{n}", "sleep": 0.2}) for n in range(1, 4)]
    deadline = time.monotonic() + 20
    while faults.broker().hlen("unacked") < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert faults.broker().hlen("unacked") == 4, "the hoarder should hold 1 running + 3 reserved messages"
    faults.kill("hoarder", signal.SIGKILL)
    killed = time.monotonic()
    with faults.ledger() as conn:
        killed_at = conn.execute(sa.select(sa.func.now())).scalar_one()
    faults.forget("hoarder")
    faults.start_worker("worker-20", env=slow_redelivery)

    done = [faults.wait(job, timeout=60) for job in [running, *reserved]]
    recovered = time.monotonic() - killed
    back = max((row["started_at"] - killed_at).total_seconds() for row in done[1:])
    print(f"worker SIGKILL holding 3 reserved messages -> they start {back:.1f}s, all done {recovered:.1f}s")
    assert [(row["state"], row["attempt"]) for row in done] == [("succeeded", 2)] + [("succeeded", 1)] * 3
    # Back within the lease (6 s) plus a rescuer round (5 s), with room for a busy machine; without
    # the leader's reclaimer they would wait for the republisher (60 s) or the visibility timeout.
    assert back < faults.settings.lease_seconds + 5 + 9
    assert recovered < 45


def test_02_sigkill_of_one_pool_child_mid_task(faults: Platform) -> None:
    job = faults.submit("test.work", {"key": "s2", "sleep": 2.5})
    child = faults.running_pid(job)
    mark = faults.log_mark("worker")
    psutil.Process(child).kill()

    row = faults.wait(job, timeout=30)
    assert (row["state"], row["attempt"]) == ("succeeded", 2)
    assert [effect["attempt"] for effect in faults.effects("s2")] == [2]
    lost = re.compile(
        rf"job {job} test\.work attempt 1/3 on queue \S+ failed after [\d.]+s; retrying now:"
        r" WorkerLostError: its pool process was lost"
    )
    assert lost.search(faults.log_since("worker", mark))


def test_02_a_kind_that_always_kills_its_process_stops_at_max_attempts(faults: Platform) -> None:
    job = faults.submit("test.crash")

    row = faults.wait(job, timeout=40)
    assert (row["state"], row["attempt"], row["max_attempts"]) == ("failed", 2, 2)
    assert row["error"]["type"] == "WorkerLost"
    assert row["error"]["message"].startswith("worker lost")
    assert faults.wait(faults.submit("ping"), timeout=20)["state"] == "succeeded"


def test_03_sigterm_lets_a_running_job_finish(faults: Platform) -> None:
    job = faults.submit("test.work", {"key": "s3a", "sleep": 1.5})
    faults.running_pid(job)
    faults.kill("worker", signal.SIGTERM)

    assert faults.processes.running["worker"].wait(timeout=20) == 0
    row = faults.wait(job, timeout=5)
    assert (row["state"], row["attempt"]) == ("succeeded", 1)
    assert len(faults.effects("s3a")) == 1


def test_03_soft_shutdown_expiry_then_sigkill_hands_the_job_to_another_worker(faults: Platform) -> None:
    faults.start_worker("worker-b", "-c", "1")
    # The body needs twice the soft shutdown window (3 s), so the window always expires first.
    job = faults.submit("test.long", {"key": "s3b", "sleep": 6})
    first = faults.wait(job, ("running",))["worker"].split("@")[0]
    faults.kill(first, signal.SIGTERM)
    time.sleep(3.5)  # the soft shutdown window expires; then the orchestrator's SIGKILL
    faults.forget(first)

    row = faults.wait(job, timeout=30)
    assert (row["state"], row["attempt"]) == ("succeeded", 2)
    assert not row["worker"].startswith(f"{first}@")
    assert [effect["attempt"] for effect in faults.effects("s3b")] == [2]


def test_06_crash_after_the_body_wrote_to_postgresql_before_commit(faults: Platform) -> None:
    job = faults.submit("test.work", {"key": "s6", "crash_on_attempt": 1})

    row = faults.wait(job, timeout=30)
    assert (row["state"], row["attempt"]) == ("succeeded", 2)
    assert [effect["attempt"] for effect in faults.effects("s6")] == [2]  # attempt 1's write never committed


def test_13_two_workers_race_for_the_same_redelivered_job(faults: Platform) -> None:
    job = faults.submit("test.work", {"key": "s13", "sleep": 3})
    faults.running_pid(job)
    faults.kill("worker", signal.SIGKILL)  # its message stays unacknowledged in Redis, its lease runs out
    faults.forget("worker")
    claimed = faults.row(job)
    assert claimed is not None
    claimed_at = claimed["started_at"]
    while datetime.now(UTC) - claimed_at < timedelta(seconds=7.5):  # past the visibility timeout (7 s)
        time.sleep(0.1)
    faults.redeliver_expired()  # copy 1: Redis hands the unacknowledged message back
    with faults.ledger() as conn:  # copy 2: as the republisher or a re-drive would send it
        kind, queue, priority, payload = conn.execute(
            sa.select(jobs.c.kind, jobs.c.queue, jobs.c.priority, jobs.c.payload).where(jobs.c.id == job)
        ).one()
    publisher.publish(
        faults.settings, faults.registry, [ledger.Published(job, kind, queue, priority, payload)]
    )
    # Two copies at least: by now the rescuer may have found the expired lease too (lease 6 s,
    # ticks of 0.2 s) and the stager published a third; every copy races for the same claim.
    assert faults.queued_messages() >= 2
    faults.start_worker("worker-b", wait=False)  # two workers race for the two copies
    faults.start_worker("worker-c", wait=False)

    row = faults.wait(job, timeout=60)
    assert (row["state"], row["attempt"]) == ("succeeded", 2)
    # The losing copy may reach a worker after the winner finished: it is ignored all the same.
    deadline = time.monotonic() + 30
    while f"job {job} (test.work) delivered again" not in faults.log("worker-b") + faults.log("worker-c"):
        assert time.monotonic() < deadline, "the second copy was never delivered and ignored"
        time.sleep(0.2)
    assert [effect["attempt"] for effect in faults.effects("s13")] == [2]  # the body ran once


def test_14_soft_and_hard_time_limits(faults: Platform) -> None:
    soft = faults.submit("test.sleep", {"seconds": 20, "steps": 200})
    hard = faults.submit("test.hang", {"seconds": 30})

    soft_row = faults.wait(soft, timeout=30)
    assert soft_row["state"] == "failed"
    assert soft_row["error"]["type"] == "SoftTimeLimitExceeded"
    assert soft_row["error"]["message"].startswith("time limit")
    hard_row = faults.wait(hard, timeout=30)
    assert hard_row["state"] == "failed"
    assert hard_row["error"]["type"] == "TimeLimitExceeded"
    assert "hard limit" in hard_row["error"]["message"]
    assert faults.wait(faults.submit("ping"), timeout=20)["state"] == "succeeded"  # the pool recovered


def test_15_a_leaking_job_gets_its_process_recycled(faults: Platform) -> None:
    leaked = faults.wait(faults.submit("test.leak", {"megabytes": 250}), timeout=30)
    assert leaked["state"] == "succeeded"
    pid = leaked["result"]["pid"]

    deadline = time.monotonic() + 20
    while pid in faults.pool_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid not in faults.pool_children(), "the leaking pool process was not replaced"
    after = [faults.submit("ping") for _ in range(4)]
    assert all(faults.wait(job, timeout=20)["state"] == "succeeded" for job in after)
