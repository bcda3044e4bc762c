from __future__ import annotations

import pytest

from tests.support.fixtures import wait_for_state

pytestmark = pytest.mark.integration


def test_ping_runs_in_process_worker(producer, worker, clean):
    job = producer.submit("ping", {"message": "hi"})
    row = wait_for_state(clean, job)
    assert row["state"] == "succeeded"
    assert row["result"]["message"] == "hi"
