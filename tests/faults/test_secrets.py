"""Secrets: a payload field declared ``SecretStr`` reaches the body and nowhere else people look.

Checked where it could leak: the worker's logs at DEBUG in both formats (text
and JSON), the task events Flower builds its pages from (and the message's
``kwargsrepr`` header they come from), what remote control lists of a request
(``inspect active``), and ``jobs status`` / ``jobs list`` in both their human and
``--json`` forms.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets

import pytest

from jobs import ledger, wire
from tests.faults.harness import Platform
from tests.support.task_events import TaskEvents

pytestmark = pytest.mark.acceptance


def test_a_secret_never_appears_in_logs_flower_status_or_list(faults: Platform) -> None:
    token = f"tok-{secrets.token_hex(12)}"
    # Task events always: this test listens to them without asking as Flower does (workers.events).
    always = {"JOBS_WORKER_TASK_EVENTS": "on"}
    faults.start_worker("secrets-text", "-Q", "secrets-text", "-l", "DEBUG", wait=False, env=always)
    faults.start_worker(
        "secrets-json", "-Q", "secrets-json", "-l", "DEBUG", env={**always, "JOBS_LOG_FORMAT": "json"}
    )
    faults.processes.wait_log("secrets-text", "ready.")

    parked = faults.submit("test.secret", {"user": "ada", "token": token}, queue="secrets-parked")
    parked_message = faults.broker().lindex(wire.queue_key("secrets-parked", 5), 0)
    assert parked_message is not None, "the parked job's message is not on its queue"
    raw = json.loads(parked_message)
    assert token in base64.b64decode(raw["body"]).decode()  # the body carries it, for the worker
    assert token not in raw["headers"]["kwargsrepr"]
    assert "ada" in raw["headers"]["kwargsrepr"]
    with faults.ledger() as conn:  # no worker consumes that queue: the checker wants it finished
        ledger.cancel(conn, parked)

    with TaskEvents(faults.settings) as events:
        jobs = [
            faults.submit("test.secret", {"user": "ada", "token": token}, queue=q)
            for q in ("secrets-text", "secrets-json")
        ]
        rows = [faults.wait(job) for job in jobs]
        faults.wait_log_since("secrets-json", 0, "Task test.secret")
    assert [row["state"] for row in rows] == ["succeeded", "succeeded"]
    assert all(row["result"]["token_length"] == len(token) for row in rows)  # the body had the secret
    received = [event for event in events.events if event["type"] == "task-received"]
    assert {event["uuid"] for event in received} == {str(job) for job in jobs}
    assert all("ada" in event["kwargs"] for event in received)
    assert token not in json.dumps(events.events)

    text_log, json_log = faults.log("secrets-text"), faults.log("secrets-json")
    # One line per transition, with the job's id, kind, attempt, queue and (when finished) duration.
    assert f"job {jobs[0]} test.secret attempt 1/1 on queue secrets-text succeeded in " in text_log
    finished = [
        json.loads(line)
        for line in json_log.splitlines()
        if line.startswith("{") and f'"job_id": "{jobs[1]}"' in line and '"state": "succeeded"' in line
    ]
    assert len(finished) == 1
    assert finished[0]["kind"] == "test.secret"
    assert finished[0]["attempt"] == 1
    assert finished[0]["queue"] == "secrets-json"
    assert finished[0]["duration"] >= 0
    assert token not in text_log
    assert token not in json_log

    for args in (
        ("status", str(jobs[0])),
        ("status", str(jobs[0]), "--json"),
        ("status", str(parked)),
        ("list",),
        ("list", "--json"),
    ):
        shown = faults.jobs(*args)
        assert shown.returncode == 0, shown.stderr
        assert token not in shown.stdout + shown.stderr, args
    assert "ada" in faults.jobs("status", str(jobs[0])).stdout


def test_celery_debug_line_for_each_task_withholds_the_message(caplog: pytest.LogCaptureFixture) -> None:
    from celery.concurrency.solo import TaskPool

    import workers.app  # noqa: F401 - installs the worker's log filters, as the worker does
    from workers.redact import POOL_LOGGER

    body = b'[[], {"user": "ada", "token": "tok-in-clear"}, {}]'
    pool = TaskPool()
    pool._does_debug = True  # type: ignore[attr-defined]  # private in Celery (start() sets it), so untyped
    with caplog.at_level(logging.DEBUG, logger=POOL_LOGGER):
        pool.apply_async(
            lambda *args: None,
            args=("test.secret", "id", {"task": "test.secret"}, body),
            callback=lambda result: None,
        )
    applied = [record.getMessage() for record in caplog.records if "TaskPool: Apply" in record.getMessage()]
    assert len(applied) == 1
    assert "tok-in-clear" not in applied[0]
    assert "arguments withheld" in applied[0]


def test_remote_control_lists_a_request_with_its_masked_payload() -> None:
    """``celery inspect active`` (and reserved, scheduled, query_task, Flower's worker page) show
    the masked payload of a request, never the message's own arguments."""
    import uuid

    from kombu.message import Message

    from workers.app import app
    from workers.task import LedgerRequest

    job = str(uuid.uuid4())
    shown = "{'user': 'ada', 'token': '**********'}"  # the producer's kwargsrepr
    headers = {"task": "ping", "id": job, "root_id": job, "argsrepr": "()", "kwargsrepr": shown}
    body = json.dumps([[], {"user": "ada", "token": "tok-in-clear"}, {}])
    message = Message(body=body, headers=headers, content_type="application/json", content_encoding="utf-8")
    listed = LedgerRequest(message, app=app, task=app.tasks["ping"]).info()  # what `inspect active` sends
    assert listed["id"] == job
    assert "tok-in-clear" not in json.dumps(listed, default=str)
    assert "ada" in listed["kwargs"]
