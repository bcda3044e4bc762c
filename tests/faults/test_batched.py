"""Scenarios 28-30: a batched worker loses a batch it had not recorded.

Each runs twice: ``jobs worker -P batched`` (a supervisor of single-process workers: the
process killed is one of those) and ``jobs worker --batches`` (batches in the prefork pool:
the process killed is the pool process running the batch)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from jobs.producer import JobId
from tests.faults.harness import Platform

pytestmark = pytest.mark.acceptance

#: How each profile is started with one process running batches, and what says it lost one.
PROFILES = {
    "batched": (["-P", "batched", "-c", "1"], "was killed by signal 9; ending its jobs' leases"),
    "pooled": (["-P", "prefork", "--batches", "-c", "1"], "was lost in pool process"),
}


@pytest.fixture(params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start_batched(faults: Platform, profile: str) -> None:
    # A wide window: every message queued behind the first one joins one batch, however slow the machine.
    faults.start_worker("batched", *PROFILES[profile][0], env={"JOBS_WORKER_BATCH_WINDOW": "0.5"})


def gate_started(faults: Platform, gate: Path) -> None:
    """Wait until the ``test.gate`` body waiting for ``gate`` runs in the batched worker."""
    deadline = time.monotonic() + 30
    while not Path(f"{gate}.started").exists():
        assert time.monotonic() < deadline, faults.log("batched")[-3000:]
        time.sleep(0.02)


def open_batch(faults: Platform, gate: Path, key: str, profile: str) -> tuple[list[JobId], JobId, JobId]:
    """Queue pings, a body that commits its own work (``ctx.session``) and a body that waits for
    ``gate``, then start one batched worker process: the last batch holds the pings before the
    gate, their bodies run, and their successes wait for the batch's finish while the gate waits."""
    faults.processes.stop("worker")
    pings = [faults.submit("ping", {"message": f"{key}-{n}"}) for n in range(8)]
    own = faults.submit("test.work", {"key": key})
    held = faults.submit("test.gate", {"path": str(gate), "seconds": 60})
    start_batched(faults, profile)
    gate_started(faults, gate)
    return pings, own, held


def test_28_sigkill_of_a_batched_worker_after_bodies_ran_before_their_batch_committed(
    faults: Platform, tmp_path: Path, profile: str
) -> None:
    gate = tmp_path / "gate"
    pings, own, held = open_batch(faults, gate, f"s28-{profile}", profile)
    states = {job: (faults.row(job) or {}).get("state") for job in [*pings, own]}
    ran = [job for job in pings if states[job] == "running"]  # bodies done, not recorded
    assert ran, "the gate's batch should hold pings that ran"
    assert states[own] == "succeeded"  # committed with its own finish, in its transaction
    (child,) = psutil.Process(faults.pid_of("batched")).children()
    child.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    gate.write_text("open")

    rows = {job: faults.wait(job, timeout=60) for job in [*pings, own, held]}
    took = time.monotonic() - killed
    print(f"batched worker SIGKILL with {len(ran)} unrecorded successes -> all done in {took:.1f}s")
    assert {row["state"] for row in rows.values()} == {"succeeded"}
    assert {rows[job]["attempt"] for job in ran} == {2}  # run again: their first attempt was lost
    assert rows[held]["attempt"] == 2
    assert rows[own]["attempt"] == 1
    assert [effect["attempt"] for effect in faults.effects(f"s28-{profile}")] == [1]  # no duplicate effect
    assert PROFILES[profile][1] in faults.log("batched")


def test_29_postgresql_stopped_while_a_batch_is_open(faults: Platform, tmp_path: Path, profile: str) -> None:
    gate = tmp_path / "gate"
    pings, own, held = open_batch(faults, gate, f"s29-{profile}", profile)
    mark = faults.log_mark("batched")
    faults.postgres.stop()  # fast shutdown: every session is cut
    try:
        gate.write_text("open")  # the batch ends now: its finish finds PostgreSQL away
        faults.wait_log_since("batched", mark, "not recorded yet", timeout=30)
        time.sleep(1)
    finally:
        faults.postgres.start()
    restarted = time.monotonic()

    rows = {job: faults.wait(job, timeout=60) for job in [*pings, own, held]}
    print(f"PostgreSQL back -> the open batch and the rest done in {time.monotonic() - restarted:.1f}s")
    assert {row["state"] for row in rows.values()} == {"succeeded"}
    # Recorded when PostgreSQL came back, within the jobs' leases: nothing ran twice.
    assert {row["attempt"] for row in rows.values()} == {1}
    assert [effect["attempt"] for effect in faults.effects(f"s29-{profile}")] == [1]
    assert faults.running("batched")


def test_30_sigkill_of_a_batched_worker_spends_no_attempt_of_the_jobs_it_had_not_started(
    faults: Platform, tmp_path: Path, profile: str
) -> None:
    """The batch's first body waits for ``gate``; the pings behind it are claimed and waiting
    their turn when the process is killed: they go back to their queue with their attempt undone
    (the supervisor reads them from the process's record, ``jobs.unstarted``); only the body that
    ran spends an attempt, as a lost prefork pool process spends one on the job it ran."""
    gate = tmp_path / "gate"
    faults.processes.stop("worker")
    held = faults.submit("test.gate", {"path": str(gate), "seconds": 60})
    pings = [faults.submit("ping", {"message": f"s30-{n}"}, max_attempts=1) for n in range(8)]
    start_batched(faults, profile)
    gate_started(faults, gate)
    claimed = {job: (faults.row(job) or {}).get("state") for job in pings}
    assert set(claimed.values()) == {"running"}, claimed  # claimed with the gate, not started
    (child,) = psutil.Process(faults.pid_of("batched")).children()
    child.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    gate.write_text("open")

    rows = {job: faults.wait(job, timeout=60) for job in [held, *pings]}
    print(
        f"batched worker SIGKILL with {len(pings)} claimed jobs not started -> all done in "
        f"{time.monotonic() - killed:.1f}s"
    )
    # max_attempts=1: a ping charged for the lost process would have failed.
    assert {rows[job]["state"] for job in pings} == {"succeeded"}
    assert {rows[job]["attempt"] for job in pings} == {1}
    assert (rows[held]["state"], rows[held]["attempt"]) == ("succeeded", 2)
    handed_back = rf"{len(pings)} job\(s\) (worker|pool) process \S+ claimed and never started: handed back"
    assert re.search(handed_back, faults.log("batched"))
