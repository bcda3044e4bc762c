"""At-least-once delivery, exactly-once effect: the same Celery message delivered twice runs the body once.

The job is submitted with the real CLI; the duplicate is the very same message
(same task id, same kwargs, same queue) published again, as Redis does when it
redelivers or as the leader's relay does when a publish is repeated.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db
from jobs.app import get_app
from jobs.schema import TERMINAL_STATES
from tests.support.fixtures import effects, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance


def submit_effect(key: str, sleep: float) -> uuid.UUID:
    result = run_jobs("submit", "test.effect", "-p", f"key={key}", "-p", f"sleep={sleep}")
    assert result.returncode == 0, result.stderr
    return uuid.UUID(result.stdout.strip())


def publish_again(row: dict[str, Any]) -> None:
    """The same message the publisher sent: task id = job id, kwargs = payload, the job's queue."""
    get_app().send_task(
        row["kind"],
        kwargs=row["payload"],
        task_id=str(row["id"]),
        queue=row["queue"],
        priority=row["priority"],
    )


def wait_deliveries(platform: Any, row: dict[str, Any], count: int, timeout: float = 20.0) -> None:
    """Until the worker has handled ``count`` messages of this job (one line each: the attempt's
    outcome, or the duplicate ignored)."""
    markers = (
        f"job {row['id']} {row['kind']} attempt 1/{row['max_attempts']} on queue {row['queue']} succeeded in",
        f"job {row['id']} ({row['kind']}) delivered again while",
    )
    deadline = time.monotonic() + timeout
    while sum(platform.log("worker").count(marker) for marker in markers) < count:
        if time.monotonic() > deadline:
            log = platform.log("worker")
            handled = sum(log.count(marker) for marker in markers)
            raise AssertionError(f"{handled} of {count} deliveries handled; worker log:\n{log[-3000:]}")
        time.sleep(0.1)


def test_a_duplicate_after_success_does_not_run_the_body_again(platform, clean):
    job_id = submit_effect("after-success", sleep=0)
    row = wait_for_state(clean, job_id)
    assert row["state"] == "succeeded"

    publish_again(row)
    wait_deliveries(platform, row, 2)

    assert effects(clean, "after-success") == [{"key": "after-success", "job_id": job_id, "attempt": 1}]
    again = wait_for_state(clean, job_id)
    assert (again["state"], again["attempt"], again["result"]) == ("succeeded", 1, row["result"])
    assert again["finished_at"] == row["finished_at"]
    assert f"job {job_id} (test.effect) delivered again while succeeded" in platform.log("worker")


def test_a_duplicate_while_running_does_not_run_the_body_twice(platform, clean):
    # The body runs until the test releases it, so the duplicate surely arrives while it runs.
    result = run_jobs("submit", "test.hold", "-p", "key=while-running", "-p", "release=released")
    assert result.returncode == 0, result.stderr
    job_id = uuid.UUID(result.stdout.strip())
    row = wait_for_state(clean, job_id, states=("running", *TERMINAL_STATES))
    assert row["state"] == "running", row["state"]

    publish_again(row)
    platform.wait_log("worker", f"job {job_id} (test.hold) delivered again while running")
    with db.transaction(clean) as conn:  # the release test.hold waits for
        conn.execute(
            sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES ('released', :j, 0)"),
            {"j": job_id},
        )
    final = wait_for_state(clean, job_id)
    wait_deliveries(platform, row, 2)

    assert (final["state"], final["attempt"]) == ("succeeded", 1)
    assert effects(clean, "while-running") == [{"key": "while-running", "job_id": job_id, "attempt": 1}]
