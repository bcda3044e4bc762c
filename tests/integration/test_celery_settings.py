"""The Celery settings of design §7, each with a check that would fail without it."""

from __future__ import annotations

import pickle
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer

from jobs.app import celery_config
from tests.support.fixtures import wait_for_state

pytestmark = pytest.mark.integration


class Canary:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_config_is_what_the_design_asks(settings):
    conf = celery_config(settings)
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == "json"
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_ignore_result"] is True
    assert conf["result_backend"] is None
    # Task events from when an event consumer asks for them (workers.events), unless told "on".
    assert conf["worker_send_task_events"] is False
    assert celery_config(settings.model_copy(update={"worker_task_events": "on"}))["worker_send_task_events"]
    assert conf["task_send_sent_event"] is True
    assert conf["broker_connection_max_retries"] is None
    assert (
        conf["broker_transport_options"]["visibility_timeout"]
        > settings.hard_time_limit + settings.lease_margin
    )
    assert conf["task_time_limit"] == settings.hard_time_limit
    assert conf["task_soft_time_limit"] == settings.soft_time_limit
    assert conf["worker_soft_shutdown_timeout"] == settings.worker_soft_shutdown_timeout


def test_every_kind_runs_under_limits_and_late_acks(worker, registry):
    from workers import app  # the worker's app (jobs.testing.reset() may have dropped the cached one)

    for declared in registry:
        if declared.body is None:  # declared here, implemented by other workers: not a task of this one
            assert declared.name not in app.tasks
            continue
        task = app.tasks[declared.name]
        assert task.acks_late
        assert task.reject_on_worker_lost
        assert task.time_limit
        assert task.soft_time_limit
        assert task.soft_time_limit < task.time_limit
    assert app.tasks["test.sleep"].time_limit == 5.0


def test_a_pickle_is_refused_and_never_loaded(producer, worker, clean, broker, tmp_path):
    canary = tmp_path / "pickle-was-loaded"
    job_id = str(uuid.uuid4())
    with Connection(clean.broker_url) as conn:
        Producer(conn).publish(
            pickle.dumps(((), {"message": Canary(canary)}, {})),
            routing_key="default",
            exchange=Exchange("default", type="direct"),
            serializer=None,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"lang": "py", "task": "ping", "id": job_id, "argsrepr": "()", "kwargsrepr": "{}"},
        )
    # The worker is still alive and keeps running jobs after it refused the pickle.
    assert wait_for_state(clean, producer.submit("ping", {}))["state"] == "succeeded"
    time.sleep(0.5)
    assert broker.llen("default") == 0  # the pickle was delivered (and dropped), not left in the queue
    assert not canary.exists()
    refused = wait_for_state(clean, uuid.UUID(job_id), timeout=10)  # recorded, never run
    assert (refused["state"], refused["attempt"], refused["error"]["type"]) == ("failed", 0, "InvalidMessage")
    assert "Refusing to deserialize untrusted content of type pickle" in refused["error"]["message"]


def test_a_message_that_is_not_json_is_refused_and_the_worker_goes_on(producer, worker, clean):
    with Connection(clean.broker_url) as conn:
        Producer(conn).publish(
            b"{not json",
            routing_key="default",
            exchange=Exchange("default", type="direct"),
            content_type="application/json",
            content_encoding="utf-8",
            headers={"lang": "py", "task": "ping", "id": str(job_id := uuid.uuid4())},
        )
    assert wait_for_state(clean, producer.submit("ping", {}))["state"] == "succeeded"
    refused = wait_for_state(clean, job_id, timeout=10)
    assert (refused["state"], refused["error"]["type"]) == ("failed", "InvalidMessage")
    assert "cannot be decoded" in refused["error"]["message"]
