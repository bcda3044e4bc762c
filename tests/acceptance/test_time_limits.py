"""Time limits and lost pool processes, with a real prefork worker."""

from __future__ import annotations

import pytest

from tests.support.fixtures import wait_for_state

pytestmark = pytest.mark.acceptance


def test_soft_limit_raises_in_the_body_and_fails_the_attempt(platform, producer, clean):
    job = producer.submit("test.sleep", {"seconds": 20, "steps": 200})
    row = wait_for_state(clean, job, timeout=30)
    assert row["state"] == "failed"
    assert row["error"]["type"] == "SoftTimeLimitExceeded"
    assert row["error"]["message"].startswith("time limit")


def test_hard_limit_kills_the_body_and_the_pool_recovers(platform, producer, clean):
    job = producer.submit("test.hang", {"seconds": 30})
    row = wait_for_state(clean, job, timeout=30)
    assert row["state"] == "failed"
    assert row["error"]["type"] == "TimeLimitExceeded"
    assert "hard limit" in row["error"]["message"]
    # The pool replaced the killed process: jobs keep running.
    assert wait_for_state(clean, producer.submit("ping", {}), timeout=30)["state"] == "succeeded"


def test_a_kind_that_kills_its_process_stops_at_max_attempts(platform, producer, clean):
    job = producer.submit("test.crash", {})
    row = wait_for_state(clean, job, timeout=60)
    assert row["state"] == "failed"
    assert row["attempt"] == 2
    assert row["error"]["type"] == "WorkerLost"
    assert wait_for_state(clean, producer.submit("ping", {}), timeout=30)["state"] == "succeeded"
