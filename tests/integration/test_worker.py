"""The run path with a real Celery worker in this process (solo pool) and the real ledger and broker."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from beat.maintenance import Stager
from jobs import db, lookup
from jobs.app import get_app
from jobs.control import cancel, replay
from jobs.schema import jobs
from tests.support.fixtures import effects, wait_for_state

pytestmark = pytest.mark.integration


def stage_until(settings, maintenance, job_id, states=("succeeded", "failed"), timeout=20.0):
    """Play the leader's stager until the job ends (retries wait in the ledger, not on the broker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        Stager(interval=0.1).run(maintenance)
        with db.transaction(settings) as conn:
            state = conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
        if state in states:
            return lookup.get_job(settings, maintenance.registry, job_id)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {state}")


def test_success_records_result_and_attempt(producer, worker, clean):
    job = producer.submit("ping", {"message": "hello"})
    wait_for_state(clean, job)
    view = lookup.get_job(clean, producer.registry, job)
    assert view["state"] == "succeeded"
    assert view["result"]["message"] == "hello"
    assert view["attempt"] == 1
    assert view["worker"].startswith("celery@") or view["worker"]
    assert [a["outcome"] for a in view["attempts"]] == ["succeeded"]
    assert view["started_at"] <= view["finished_at"]


def test_retries_go_through_the_ledger_until_success(producer, worker, clean, maintenance):
    job = producer.submit("test.flaky", {"succeed_on": 3})
    view = stage_until(clean, maintenance, job)
    assert view["state"] == "succeeded"
    assert view["result"] == {"attempt": 3}
    assert [a["outcome"] for a in view["attempts"]] == ["error", "error", "succeeded"]
    assert view["attempts"][0]["error"]["type"] == "ConnectionError"


def test_a_failing_kind_fails_after_max_attempts_with_each_error(producer, worker, clean, maintenance):
    job = producer.submit("test.fail", {})
    view = stage_until(clean, maintenance, job)
    assert view["state"] == "failed"
    assert view["attempt"] == 3
    assert [a["error"]["message"] for a in view["attempts"]] == [
        "boom on attempt 1",
        "boom on attempt 2",
        "boom on attempt 3",
    ]
    assert "RuntimeError: boom on attempt 3" in view["error"]["traceback"]


def test_body_work_commits_with_success_and_rolls_back_with_failure(producer, worker, clean):
    ok = producer.submit("test.effect", {"key": "kept"})
    bad = producer.submit("test.effect", {"key": "dropped", "fail_after_write": True})
    assert wait_for_state(clean, ok)["state"] == "succeeded"
    failed = wait_for_state(clean, bad)
    assert failed["state"] == "failed"
    assert failed["attempt"] == 1  # jobs.Fail is not retried
    assert len(effects(clean, "kept")) == 1
    assert effects(clean, "dropped") == []


def test_cancel_a_running_job_rolls_its_work_back(producer, worker, clean):
    job = producer.submit("test.effect", {"key": "cancelled", "sleep": 5})
    wait_for_state(clean, job, ("running",))
    assert cancel(clean, get_app(), job) == "running"
    time.sleep(0.5)  # the body notices ctx.cancelled() within 50 ms and returns
    row = wait_for_state(clean, job)
    assert row["state"] == "cancelled"
    assert effects(clean, "cancelled") == []


def test_progress_reports_reach_the_ledger(producer, worker, clean):
    job = producer.submit("test.sleep", {"seconds": 0.2, "steps": 2})
    row = wait_for_state(clean, job)
    assert row["state"] == "succeeded"
    assert row["progress"] == {"done": 2, "total": 2, "message": "done"}


def test_replay_makes_a_new_linked_job(producer, worker, clean):
    job = producer.submit("test.effect", {"key": "replayed", "fail_after_write": True})
    wait_for_state(clean, job)
    again = replay(producer, job)
    assert again != job
    row = wait_for_state(clean, again)
    assert row["retry_of"] == job
    assert row["state"] == "failed"


def test_foreign_send_task_is_adopted_and_run(producer, worker, clean):
    job_id = str(uuid.uuid4())
    get_app().send_task("ping", kwargs={"message": "from outside"}, task_id=job_id, queue="default")
    row = wait_for_state(clean, uuid.UUID(job_id))
    assert row["state"] == "succeeded"
    assert row["submitted_by"] == "adopted"
    assert row["result"]["message"] == "from outside"


def test_foreign_message_with_invalid_payload_is_failed_not_retried(producer, worker, clean):
    job_id = str(uuid.uuid4())
    get_app().send_task("ping", kwargs={"message": 12, "extra": True}, task_id=job_id, queue="default")
    row = wait_for_state(clean, uuid.UUID(job_id))
    assert row["state"] == "failed"
    assert row["error"]["type"] == "InvalidPayload"
    assert row["attempt"] == 0
    # The worker keeps running.
    assert wait_for_state(clean, producer.submit("ping", {}))["state"] == "succeeded"


def test_duplicate_delivery_runs_the_body_once(producer, worker, clean):
    job = producer.submit("test.effect", {"key": "once", "sleep": 0.3})
    get_app().send_task(
        "test.effect", kwargs={"key": "once", "sleep": 0.3}, task_id=str(job), queue="default"
    )
    assert wait_for_state(clean, job)["state"] == "succeeded"
    time.sleep(0.8)  # let the second delivery arrive and be absorbed
    assert len(effects(clean, "once")) == 1
