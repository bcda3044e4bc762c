"""``jobs queue pause/resume`` against real worker processes: running jobs finish, new ones wait,
the pause survives a worker restart, and resuming runs what waited."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import sqlalchemy as sa

from jobs import db
from tests.support.fixtures import queued_messages, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance

WORKER = ("worker", "-c", "1", "-Q", "default", "-l", "INFO")
STAYS = 4.0  # seconds a paused job is watched to make sure no worker takes it


@pytest.fixture
def no_pauses(clean):
    with db.transaction(clean) as conn:
        conn.execute(sa.text("TRUNCATE queue_pauses"))
    yield clean
    with db.transaction(clean) as conn:
        conn.execute(sa.text("TRUNCATE queue_pauses"))


def submitted(*args: str) -> uuid.UUID:
    result = run_jobs("submit", *args)
    assert result.returncode == 0, result.stderr
    return uuid.UUID(result.stdout.strip())


def still_queued(settings, job_id: uuid.UUID, seconds: float = STAYS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with db.transaction(settings) as conn:
            state = conn.execute(sa.text("SELECT state FROM jobs WHERE id = :i"), {"i": job_id}).scalar_one()
        assert state == "queued", f"job {job_id} of a paused queue was taken: {state}"
        time.sleep(0.2)


def test_a_paused_queue_waits_across_a_worker_restart_and_runs_when_resumed(no_pauses, processes, broker):
    settings = no_pauses
    processes.start("worker", *WORKER)
    processes.wait_log("worker", "ready.", timeout=60)
    running = submitted("test.sleep", "-p", "seconds=2", "-p", "steps=4")
    wait_for_state(settings, running, states=("running",), timeout=30)

    # Pause while a job runs: the worker is told at once, the running job finishes.
    paused = run_jobs("queue", "pause", "default", "--reason", "acceptance test")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "queue default paused"
    assert "1 worker(s) told" in paused.stderr
    processes.wait_log("worker", "queue default is paused", timeout=30)
    waiting = submitted("ping", "-p", "message=after the pause")
    assert wait_for_state(settings, running, timeout=30)["state"] == "succeeded"
    still_queued(settings, waiting)
    assert queued_messages(broker) >= 1  # the job waits in Redis, not lost

    # A restarted worker reads the pause before it consumes anything.
    processes.stop("worker")
    processes.start("worker-again", *WORKER)
    processes.wait_log("worker-again", "ready.", timeout=60)
    assert "queue default is paused" in processes.log("worker-again")
    still_queued(settings, waiting)

    again = run_jobs("queue", "pause", "default", "--json")
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert (data["changed"], data["paused"], data["reason"]) == (False, True, "acceptance test")

    resumed = run_jobs("queue", "resume", "default", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {
        "queue": "default",
        "changed": True,
        "paused": False,
        "workers_told": 1,
    }
    row = wait_for_state(settings, waiting, timeout=30)
    assert row["state"] == "succeeded"
    assert row["attempt"] == 1
    processes.wait_log("worker-again", "queue default is resumed", timeout=10)


def test_the_poll_alone_applies_a_pause_when_no_broadcast_arrives(no_pauses, processes):
    """A pause written while Redis could not carry the broadcast is still applied within JOBS_PAUSE_POLL."""
    from jobs import pauses

    processes.start("worker", *WORKER, env={"JOBS_PAUSE_POLL": "1"})
    processes.wait_log("worker", "ready.", timeout=60)

    pauses.pause(no_pauses, "default", by="test", reason="no broadcast")  # the ledger only
    processes.wait_log("worker", "queue default is paused", timeout=15)
    waiting = submitted("ping")
    still_queued(no_pauses, waiting)

    pauses.resume(no_pauses, "default")
    assert wait_for_state(no_pauses, waiting, timeout=30)["state"] == "succeeded"


def test_resume_of_a_queue_that_is_not_paused_says_so(no_pauses):
    result = run_jobs("queue", "resume", "default")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "queue default was not paused"

    bad = run_jobs("queue", "pause", " ")
    assert bad.returncode == 2
    assert "is not a queue name" in bad.stderr
