"""``workers.batching``: what the batched strategy says of a message it receives."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from jobs import logs
from workers import batching

pytestmark = pytest.mark.unit


def test_a_batched_message_logs_celerys_received_line_at_debug_with_the_masked_payload(caplog):
    """Celery's default strategy logs "Task name[id] received" (demoted to DEBUG by ``jobs.logs``);
    the batched strategy logs the same line, with the masked payload Celery's line carries."""
    logs.quiet_celery_tasks()
    task: Any = SimpleNamespace(name="test.secret")
    headers = {"id": "j1", "argsrepr": "()", "kwargsrepr": "{'user': 'ada', 'token': '***'}"}
    message: Any = SimpleNamespace(headers=headers)
    with caplog.at_level(logging.INFO, logger="celery.worker.strategy"):
        batching._log_received(task, message)
    assert caplog.records == []  # INFO only: the demoted line is not shown
    with caplog.at_level(logging.DEBUG, logger="celery.worker.strategy"):
        batching._log_received(task, message)
    (record,) = caplog.records
    assert (record.levelno, record.getMessage()) == (logging.DEBUG, "Task test.secret[j1] received")
    assert record.data["kwargs"] == "{'user': 'ada', 'token': '***'}"
