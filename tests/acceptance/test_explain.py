"""``jobs explain ID`` for each reason a job is not running, against a real worker and ledger.

The module's platform is one worker consuming ``default`` and no leader at
first (so that delayed and retrying jobs stay put); the leader is started
for the last test.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobs import pauses
from jobs.settings import Settings
from tests.integration.test_cockpit_ledger import ago, put
from tests.support.fixtures import Processes, run_jobs, run_jobs_together, wait_for_state

pytestmark = pytest.mark.acceptance


@pytest.fixture(scope="module")
def worker_only(ledger_db: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    started = Processes(tmp_path_factory.mktemp("explain"))
    try:
        started.start("worker", "worker", "-c", "2", "-Q", "default", "-l", "INFO")
        started.wait_log("worker", "ready.", timeout=90)
        yield started
    finally:
        started.stop_all()


def submit(*args: str) -> str:
    result = run_jobs("submit", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def explain(job_id: str | uuid.UUID) -> tuple[list[dict[str, Any]], str]:
    """The reasons (JSON) and the human text for one job."""
    as_json, human = run_jobs_together(("explain", str(job_id), "--json"), ("explain", str(job_id)))
    assert as_json.returncode == 0, as_json.stderr
    assert human.returncode == 0, human.stderr
    return json.loads(as_json.stdout)["reasons"], human.stdout


def codes(reasons: list[dict[str, Any]]) -> list[str]:
    return [reason["code"] for reason in reasons]


def test_a_delayed_job_is_not_due_and_nobody_leads(clean, worker_only):
    reasons, text = explain(submit("ping", "--delay", "10m"))
    assert codes(reasons) == ["not_due", "no_leader"]
    assert "not due until" in text
    assert "start the leader: `jobs beat`" in text


def test_a_due_retry_waits_for_the_leader(clean, worker_only):
    job = put(clean, "retrying", queue="default", attempt=1, not_before=ago(30))
    reasons, _ = explain(job)
    assert codes(reasons) == ["no_leader"]


def test_a_job_claimed_by_a_worker_that_stopped_heartbeating(clean, worker_only):
    job = put(
        clean,
        "running",
        queue="default",
        attempt=1,
        worker="celery@ghost",
        started_at=ago(90),
        lease_until=ago(5),
    )
    reasons, text = explain(job)
    assert codes(reasons)[0] == "worker_lost"
    assert "claimed by celery@ghost, which stopped heartbeating" in text


def test_jobs_on_a_queue_nobody_consumes_wait_in_line(clean, worker_only):
    first = submit("ping", "--queue", "nowhere")
    submit("ping", "--queue", "nowhere")
    third = submit("ping", "--queue", "nowhere")
    reasons, text = explain(first)
    assert codes(reasons) == ["no_consumer"]
    assert "no worker consumes queue 'nowhere'" in text
    assert "jobs worker -Q nowhere" in text
    reasons, text = explain(third)
    assert codes(reasons) == ["no_consumer", "waiting"]
    assert "waiting behind 2 job(s)" in text


def test_a_job_in_a_paused_queue(clean, worker_only):
    pauses.pause(clean, "held", by="test", reason="maintenance")
    try:
        reasons, text = explain(submit("ping", "--queue", "held"))
    finally:
        pauses.resume(clean, "held")
    assert codes(reasons)[0] == "paused"
    assert "jobs queue resume held" in text


def test_a_running_job_and_a_finished_one(clean, worker_only):
    running = submit("test.hold", "-p", f"key={uuid.uuid4()}")  # runs until cancelled
    wait_for_state(clean, uuid.UUID(running), ("running",), timeout=60)
    reasons, text = explain(running)
    assert codes(reasons) == ["running"]
    assert "running now on worker-" in text
    assert run_jobs("cancel", running).returncode == 0
    reasons, text = explain(running)
    assert codes(reasons) == ["finished"]
    assert "already finished: cancelled" in text


def test_with_a_leader_a_delayed_job_is_only_not_due(clean, worker_only):
    worker_only.start("beat", "beat", "-l", "INFO")
    worker_only.wait_log("beat", "is now the leader", timeout=90)
    reasons, _ = explain(submit("ping", "--delay", "10m"))
    assert codes(reasons) == ["not_due"]


def test_an_unknown_job_is_one_line_and_exit_2(clean):
    result = run_jobs("explain", str(uuid.uuid4()))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no job with id")
    assert "Traceback" not in result.stderr
