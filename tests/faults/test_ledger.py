"""Scenario 12: PostgreSQL goes away while workers run, and comes back."""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import Platform

pytestmark = pytest.mark.acceptance


def test_12_postgresql_stopped_for_10_seconds_while_workers_run(faults: Platform) -> None:
    work = [faults.submit("test.work", {"key": f"s12-{n}", "sleep": 1}) for n in range(6)]
    faults.running_pid(work[0])
    worker_mark = faults.log_mark("worker")
    faults.postgres.stop()  # fast shutdown: every session is cut
    stopped = time.monotonic()
    try:
        refused = faults.jobs("submit", "test.work", "-p", "key=s12-refused")
        time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
    finally:
        faults.postgres.start()
    restarted = time.monotonic()
    faults.workload.refuse(key="s12-refused")

    assert refused.returncode == 3, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr  # one line, no traceback
    assert "PostgreSQL is unreachable" in refused.stderr
    assert refused.stdout == ""

    for job in work:
        assert faults.wait(job, timeout=60)["state"] == "succeeded"
    print(f"PostgreSQL back -> all jobs done in {time.monotonic() - restarted:.1f}s")
    assert "message handed back" in faults.log_since("worker", worker_mark)
    assert faults.running("worker")  # recovered by itself
