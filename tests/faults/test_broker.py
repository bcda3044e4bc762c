"""Scenarios 4, 5, 7-11 and 19: Redis redelivers, loses, pauses or misses messages (9 and 10 on
both workers: prefork and ``-P batched``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import sqlalchemy as sa

from jobs.schema import jobs
from tests.faults.harness import Platform
from tests.support.controls import WEDGE_COMMAND
from tests.support.fixtures import ROOT

pytestmark = pytest.mark.acceptance


def _worker_with(faults: Platform, pool: str) -> None:
    """Run the scenario on the standard prefork worker, or on a batched one in its place (its
    Lua pop, remote-control thread and reconnection; the harness restores the fleet after)."""
    if pool == "batched":
        faults.processes.stop("worker")
        faults.start_worker("batched", "-P", "batched", "-c", "2")


def test_04_a_job_running_longer_than_the_visibility_timeout_runs_once(faults: Platform) -> None:
    job = faults.submit("test.long", {"key": "s4", "sleep": 9})
    faults.running_pid(job)
    mark = faults.log_mark("worker")
    time.sleep(7.5)  # the visibility timeout (7 s) passes while the body still runs
    faults.redeliver_expired()

    faults.wait_log_since("worker", mark, f"job {job} (test.long) delivered again while running", timeout=10)
    row = faults.wait(job, timeout=20)
    assert (row["state"], row["attempt"]) == ("succeeded", 1)
    assert len(faults.effects("s4")) == 1


def test_05_a_delay_longer_than_the_visibility_timeout_runs_once_on_time(faults: Platform) -> None:
    job = faults.submit("test.work", {"key": "s5"}, delay=9)
    time.sleep(1)
    row = faults.row(job)
    assert row is not None
    assert row["state"] == "scheduled"  # waiting in the ledger, not on the broker
    assert faults.queued_messages() == 0
    assert faults.broker().hlen("unacked") == 0

    row = faults.wait(job, timeout=30)
    assert (row["state"], row["attempt"]) == ("succeeded", 1)
    late = (row["started_at"] - row["not_before"]).total_seconds()
    assert 0 <= late < 3, f"started {late:.2f}s after its time"
    assert len(faults.effects("s5")) == 1


KILLED_PRODUCER = textwrap.dedent(
    """
    import os, signal, sys
    from jobs import publisher
    from jobs.producer import Producer

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # after the ledger commit, before any message is sent

    publisher.publish_committed = die
    Producer().submit("test.work", {"key": "s7"}, idempotency_key=sys.argv[1])
    """
)


def test_07_producer_killed_between_ledger_commit_and_publish(faults: Platform) -> None:
    key = f"s7-{uuid.uuid4()}"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_PRODUCER, key],
        cwd=ROOT,
        env={**faults.base_env(), **faults.env},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    with faults.ledger() as conn:
        job = conn.execute(sa.select(jobs.c.id).where(jobs.c.idempotency_key == key)).scalar_one()
    faults.workload.accept(job)
    assert faults.queued_messages() == 0  # committed, never sent
    # The republisher sends it after JOBS_REPUBLISH_AFTER: 2 s for this leader (the others use 60 s).
    faults.processes.stop("beat")
    faults.start_beat("beat-7", env={"JOBS_REPUBLISH_AFTER": "2"})

    row = faults.wait(job, timeout=30)
    assert (row["state"], row["attempt"]) == ("succeeded", 1)
    assert "republisher: 1 queued job(s)" in faults.log("beat-7")


def test_08_redis_down_at_submit(faults: Platform) -> None:
    faults.redis.stop()
    try:
        submitted = faults.jobs("submit", "test.work", "-p", "key=s8")
    finally:
        faults.redis.start()
    assert submitted.returncode == 0, submitted.stderr
    assert "unreachable" in submitted.stderr
    assert "will be published" in submitted.stderr
    job = uuid.UUID(submitted.stdout.strip())
    faults.workload.accept(job)

    row = faults.wait(job, timeout=30)
    assert (row["state"], row["attempt"]) == ("succeeded", 1)
    assert len(faults.effects("s8")) == 1


@pytest.mark.parametrize("pool", ["prefork", "batched"])
def test_09_redis_restarted_empty_with_1000_jobs_queued(faults: Platform, pool: str) -> None:
    _worker_with(faults, pool)
    ids = faults.producer.submit_many("ping", [{}] * 950)
    ids += faults.producer.submit_many("test.work", [{"key": f"s9-{n}"} for n in range(50)])
    faults.workload.accept(*ids)
    mark = faults.log_mark("beat")
    faults.redis.restart_empty()
    restarted = time.monotonic()

    waited = faults.wait_log_since("beat", mark, "queued job(s) published again", timeout=20)
    line = next(x for x in faults.log_since("beat", mark).splitlines() if "published again" in x)
    print(f"Redis restart empty -> queue re-driven: {waited:.2f}s ({line.split('redrive: ')[-1]})")
    for job in ids:
        faults.wait(job, timeout=90)
    print(f"Redis restart empty -> 1000 jobs done: {time.monotonic() - restarted:.1f}s")


@pytest.mark.parametrize("pool", ["prefork", "batched"])
def test_10_redis_paused_for_15_seconds(faults: Platform, pool: str) -> None:
    _worker_with(faults, pool)
    before = [faults.submit("test.work", {"key": f"s10-{n}", "sleep": 0.2}) for n in range(10)]
    faults.redis.pause()
    try:
        during = faults.jobs("submit", "test.work", "-p", "key=s10-during")
        time.sleep(max(0.0, 15 - 6))
    finally:
        faults.redis.resume()
    resumed = time.monotonic()
    assert during.returncode == 0, during.stderr
    assert "will be published" in during.stderr
    job = uuid.UUID(during.stdout.strip())
    faults.workload.accept(job)

    for each in [*before, job]:
        assert faults.wait(each, timeout=60)["state"] == "succeeded"
    print(f"Redis SIGSTOP 15 s -> all done {time.monotonic() - resumed:.1f}s after SIGCONT")


def test_11_flushall_on_the_broker_db(faults: Platform) -> None:
    busy = [faults.submit("test.work", {"key": f"s11-busy-{n}", "sleep": 2}) for n in range(2)]
    for job in busy:
        faults.wait(job, ("running",))
    waiting = [faults.submit("test.work", {"key": f"s11-{n}"}) for n in range(20)]
    assert faults.queued_messages() == 20
    mark = faults.log_mark("beat")
    faults.broker().flushall()

    faults.wait_log_since("beat", mark, "lost its data (jobs.epoch was missing)", timeout=10)
    for job in [*busy, *waiting]:
        assert faults.wait(job, timeout=40)["state"] == "succeeded"


def test_19_a_worker_that_stops_taking_messages_reconnects(faults: Platform) -> None:
    """kombu's reconnect bug leaves a worker connected, answering pings, and idle: the watchdog ends it."""
    assert faults.control(WEDGE_COMMAND), "the worker did not answer"
    mark = faults.log_mark("worker")
    ids = faults.producer.submit_many("ping", [{}] * 20)
    faults.workload.accept(*ids)
    wedged = time.monotonic()
    time.sleep(1.0)  # a third of the stall timeout (3 s): the wedge holds, the watchdog has not acted
    with faults.ledger() as conn:
        queued = conn.execute(
            sa.select(sa.func.count()).select_from(jobs).where(jobs.c.id.in_(ids), jobs.c.state == "queued")
        ).scalar_one()
    assert queued >= 19  # one BRPOP may have been in flight when the wedge came

    for job in ids:
        assert faults.wait(job, timeout=30)["state"] == "succeeded"
    print(f"worker stopped taking messages -> all 20 jobs done: {time.monotonic() - wedged:.1f}s")
    log = faults.log_since("worker", mark)
    assert "stall watchdog" in log
    assert "reconnecting to the broker" in log
    assert "Connected to redis" in log
