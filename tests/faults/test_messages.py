"""Scenarios 16-18: messages from outside the producer, good and bad, and oversized payloads."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs import ledger, wire
from tests.faults.harness import Platform

pytestmark = pytest.mark.acceptance


class Canary:
    """Unpickling this writes a file: if the file appears, a worker loaded a pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def raw_message(job_id: uuid.UUID, kind: str, body: bytes, *, content_type: str = "application/json") -> str:
    """A message in kombu's Redis envelope, with the body and content type given."""
    envelope = json.loads(wire.encode(job_id, kind, "default", 0, "{}", "{}"))
    envelope["body"] = base64.b64encode(body).decode()
    envelope["content-type"] = content_type
    return json.dumps(envelope)


@pytest.mark.parametrize("pool", ["prefork", "batched"])
def test_16_poison_messages_are_refused_and_the_worker_keeps_running(
    faults: Platform, tmp_path: Path, pool: str
) -> None:
    name = "worker"
    if pool == "batched":  # the same bytes through jobs worker -P batched (workers.batching)
        faults.processes.stop("worker")
        name = "batched"
        faults.start_worker(name, "-P", "batched", "-c", "2")
    canary = tmp_path / "pickle-was-loaded"
    worker_pid = faults.pid_of(name)
    not_json, pickled, headless = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    without_headers = json.loads(raw_message(headless, "test.work", b'[[], {"key": "s16-headless"}, {}]'))
    without_headers["headers"] = {}
    messages = [
        raw_message(not_json, "test.work", b"{this is not json"),
        raw_message(
            pickled, "test.work", pickle.dumps(Canary(canary)), content_type="application/x-python-serialize"
        ),
        json.dumps(without_headers),
    ]
    faults.workload.refuse(headless)  # no task headers, no job id: nothing to record it under
    faults.workload.accept(not_json, pickled)  # recorded as failed, with the reason
    mark = faults.log_mark(name)
    faults.broker().lpush("default", *messages)
    wrong_types = faults.send_foreign("test.work", {"key": 16, "sleep": "long"})
    unknown = faults.send_foreign("no.such.kind", {"anything": 1})
    faults.workload.accept(wrong_types, unknown)

    bad = faults.wait(wrong_types)
    assert (bad["state"], bad["attempt"], bad["error"]["type"]) == ("failed", 0, "InvalidPayload")
    assert "key" in bad["error"]["message"]
    lost = faults.wait(unknown)
    assert lost["state"] == "failed"
    assert lost["error"]["message"] == (
        "unknown kind 'no.such.kind': no worker of this fleet has ever implemented it"
    )
    after = faults.submit("ping")
    assert faults.wait(after)["state"] == "succeeded"
    for refused, why in ((not_json, "cannot be decoded"), (pickled, "untrusted content of type pickle")):
        row = faults.wait(refused)
        assert (row["state"], row["attempt"], row["error"]["type"]) == ("failed", 0, "InvalidMessage")
        assert why in row["error"]["message"]
    assert faults.pid_of(name) == worker_pid
    assert faults.running(name)
    assert not canary.exists(), "a pickle was loaded"
    log = faults.log_since(name, mark)
    assert "Can't decode message body" in log  # not JSON
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert "Received and deleted unknown message" in log  # no task headers
    assert faults.queued_messages() == 0  # refused, not left to loop
    assert "Unrecoverable error" not in log
    assert "starting a new one" not in log  # no batched worker process died on them either


def test_16_a_submitted_job_whose_kind_no_worker_implements_waits_without_spending_attempts(
    faults: Platform,
) -> None:
    job = uuid.uuid4()
    with faults.ledger() as conn:
        ledger.insert_rows(
            conn,
            [
                {
                    "id": job,
                    "kind": "gone.kind",
                    "queue": "default",
                    "priority": 5,
                    "payload": {},
                    "state": "queued",
                    "max_attempts": 3,
                }
            ],
            idempotent=False,
        )
    faults.workload.accept(job)
    faults.broker().lpush("default", wire.encode(job, "gone.kind", "default", 0, "{}", "{}"))

    row = faults.wait(job, ("queued",), where=lambda r: r["handed_back_at"] is not None)
    assert (row["attempt"], row["published_at"]) == (0, None)
    assert faults.queued_messages() == 0  # it waits in the ledger, not bouncing between workers
    explained = faults.jobs("explain", str(job))
    assert "no live worker implements kind 'gone.kind'" in explained.stdout
    cancelled = faults.jobs("cancel", str(job))  # an operator gives up on it: one terminal state
    assert cancelled.returncode == 0, cancelled.stderr
    assert faults.wait(job)["state"] == "cancelled"


def test_17_an_oversized_payload_is_refused_at_submit(faults: Platform, tmp_path: Path) -> None:
    payload = tmp_path / "big.json"
    key = "s17" + "x" * faults.settings.max_payload_bytes
    payload.write_text(json.dumps({"key": key}))
    faults.workload.refuse(key=key)

    refused = faults.jobs("submit", "test.work", "--payload-file", str(payload))
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "payload" in refused.stderr
    assert refused.stdout == ""
    with faults.ledger() as conn:
        since = faults.workload.since
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM jobs WHERE created_at >= :s"), {"s": since}
            ).scalar_one()
            == 0
        )


def test_18_a_foreign_send_task_message_is_adopted_and_run(faults: Platform) -> None:
    job = faults.send_foreign("test.work", {"key": "s18"})
    faults.workload.accept(job)

    row = faults.wait(job)
    assert (row["state"], row["attempt"], row["submitted_by"]) == ("succeeded", 1, "adopted")
    assert len(faults.effects("s18")) == 1
