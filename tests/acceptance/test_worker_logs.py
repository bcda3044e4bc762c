"""What a worker logs: one line per attempt outcome, at the level the outcome deserves.

Real prefork workers (the pool process pickles the attempt's outcome back to
the main process, which is where a failure used to turn into
``UnpickleableExceptionWrapper`` and an 18-line traceback) and a leader (it
publishes the retries). One worker logs text, the other JSON.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db
from jobs.producer import Producer
from jobs.schema import job_attempts
from tests.support.fixtures import Processes, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance

HOST = socket.gethostname()
#: What must never appear in a worker's log at INFO: Celery's wrapper of an exception it could
#: not unpickle, its own per-task lines, tracebacks, and a duration that reads as a delay.
FORBIDDEN = (
    "Wrapper",
    "AttemptFailed",
    "Traceback",
    "raised unexpected",
    "raised expected",
    "Task handler raised error",
    "retrying in",
    "] succeeded in",
    "Hard time limit",
)
TEXT_LINE = re.compile(r"^\[[^\]]*: (?P<level>[A-Z]+)/(?P<process>[^\]]+)\] (?P<message>.*)$")


@pytest.fixture(scope="module")
def stack(ledger_db, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    started = Processes(tmp_path_factory.mktemp("worker-logs"))
    try:
        started.start("text", "worker", "-c", "1", "-Q", "logs-text", "-n", f"logs-text@{HOST}")
        started.start(
            "json",
            "worker",
            "-c",
            "1",
            "-Q",
            "logs-json",
            "-n",
            f"logs-json@{HOST}",
            env={"JOBS_LOG_FORMAT": "json"},
        )
        started.start("beat", "beat")
        started.wait_log("text", "ready.", timeout=90)
        started.wait_log("json", "ready.", timeout=90)
        started.wait_log("beat", "is now the leader", timeout=90)
        yield started
    finally:
        started.stop_all()


def text_lines(stack: Processes, job_id: uuid.UUID) -> list[dict[str, str]]:
    """The text worker's lines about one job: level, process, message (continuation lines kept)."""
    lines: list[dict[str, str]] = []
    for raw in stack.log("text").splitlines():
        parsed = TEXT_LINE.match(raw)
        if parsed:
            lines.append(parsed.groupdict())
        elif lines:  # a continuation (a traceback) belongs to the line before
            lines[-1]["message"] += "\n" + raw
    return [line for line in lines if str(job_id) in line["message"]]


def json_lines(stack: Processes, job_id: uuid.UUID) -> list[dict[str, Any]]:
    found = [json.loads(raw) for raw in stack.log("json").splitlines() if raw.startswith("{")]
    return [line for line in found if str(job_id) in json.dumps(line)]


def attempts(settings, job_id: uuid.UUID) -> Sequence[Any]:
    with db.transaction(settings) as conn:
        return conn.execute(
            sa.select(job_attempts).where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.attempt)
        ).all()


def at_ms(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_a_retry_warns_once_with_its_next_run_time_and_a_final_failure_is_one_error(stack, clean, registry):
    producer = Producer(clean, registry=registry)
    flaky = producer.submit("test.flaky", {"succeed_on": 2}, queue="logs-text")
    failing = producer.submit("test.fail", queue="logs-text")
    assert wait_for_state(clean, flaky)["state"] == "succeeded"
    assert wait_for_state(clean, failing)["state"] == "failed"

    lines = text_lines(stack, flaky)
    assert [line["level"] for line in lines] == ["WARNING", "INFO"], lines
    retry, success = (line["message"] for line in lines)
    prefix = f"job {flaky} test.flaky attempt 1/5 on queue logs-text failed after "
    assert retry.startswith(prefix), retry
    assert retry.endswith("): ConnectionError: not yet (attempt 1)"), retry
    # The time logged is when the retry runs: the ledger's not_before, 0.2 s after the failure.
    retrying_at = re.search(r"retrying at (\S+) \(in ", retry)
    assert retrying_at, retry
    logged = at_ms(retrying_at.group(1))
    first, second = attempts(clean, flaky)
    assert abs(logged - (first.finished_at + timedelta(seconds=0.2))) <= timedelta(milliseconds=1)
    assert second.started_at >= logged - timedelta(milliseconds=1)
    assert success.startswith(f"job {flaky} test.flaky attempt 2/5 on queue logs-text succeeded in ")

    lines = text_lines(stack, failing)
    assert [line["level"] for line in lines] == ["WARNING", "WARNING", "ERROR"], lines
    assert lines[2]["message"].startswith(
        f"job {failing} test.fail attempt 3/3 on queue logs-text failed after "
    )
    assert lines[2]["message"].endswith("(no attempts left): RuntimeError: boom on attempt 3")
    for line in text_lines(stack, flaky) + lines:
        assert not any(word in line["message"] for word in FORBIDDEN), line
    assert not any(word in stack.log("text") for word in FORBIDDEN)

    status = run_jobs("status", str(failing))  # where the traceback is
    assert status.returncode == 0, status.stderr
    assert "traceback of the last error:" in status.stdout
    assert "Traceback (most recent call last)" in status.stdout
    assert "RuntimeError: boom on attempt 3" in status.stdout.split("traceback of the last error:")[1]


def test_the_main_process_lines_for_hard_time_limits_and_lost_pool_processes(stack, clean, registry):
    producer = Producer(clean, registry=registry)
    hung = producer.submit("test.hang", {"seconds": 30}, queue="logs-text")
    crashed = producer.submit("test.crash", queue="logs-text")
    assert wait_for_state(clean, hung, timeout=30)["state"] == "failed"
    assert wait_for_state(clean, crashed, timeout=30)["state"] == "failed"

    lines = text_lines(stack, hung)
    assert [(line["level"], line["process"]) for line in lines] == [("ERROR", "MainProcess")], lines
    assert lines[0]["message"].startswith(
        f"job {hung} test.hang attempt 1/1 on queue logs-text failed after "
    )
    assert lines[0]["message"].endswith("TimeLimitExceeded: time limit: killed after 2.0s (hard limit)")

    lines = text_lines(stack, crashed)
    assert [line["level"] for line in lines] == ["WARNING", "ERROR"], lines
    assert "attempt 1/2 on queue logs-text failed after " in lines[0]["message"]
    assert "; retrying now: WorkerLostError: its pool process was lost" in lines[0]["message"]
    assert "attempt 2/2 on queue logs-text failed after " in lines[1]["message"]
    assert [row.outcome for row in attempts(clean, crashed)] == ["lost", "lost"]
    assert not any(word in stack.log("text") for word in FORBIDDEN)


def test_the_json_format_keeps_one_object_per_outcome_with_the_next_run_time(stack, clean, registry):
    producer = Producer(clean, registry=registry)
    failing = producer.submit("test.fail", queue="logs-json")
    assert wait_for_state(clean, failing)["state"] == "failed"

    lines = json_lines(stack, failing)
    assert [(line["level"], line["state"]) for line in lines] == [
        ("WARNING", "retrying"),
        ("WARNING", "retrying"),
        ("ERROR", "failed"),
    ], lines
    done = attempts(clean, failing)
    for line, row in zip(lines, done, strict=True):
        assert line["job_id"] == str(failing)
        assert line["attempt"] == row.attempt
        assert line["queue"] == "logs-json"
        assert line["duration"] >= 0
        assert "exception" not in line  # the traceback is in the ledger, and in the log at DEBUG only
        assert not any(word in line["message"] for word in FORBIDDEN), line
    for line, row in zip(lines[:2], done[:2], strict=True):
        assert abs(at_ms(line["next_run_at"]) - (row.finished_at + timedelta(seconds=0.2))) <= timedelta(
            milliseconds=1
        )
    assert "next_run_at" not in lines[2]
