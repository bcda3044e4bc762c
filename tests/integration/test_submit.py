"""The submit path against the real ledger and broker."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobs import db
from jobs.errors import InvalidPayload, PayloadTooLarge, UnknownKind
from jobs.producer import Producer
from jobs.schema import jobs

pytestmark = pytest.mark.integration


def rows(settings) -> list[dict]:
    with db.transaction(settings) as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(jobs).order_by(jobs.c.created_at))]


def queue_length(broker, queue: str = "default") -> int:
    return sum(broker.llen(key) for key in broker.scan_iter(f"{queue}*") if broker.type(key) == b"list")


def test_submit_commits_the_row_then_publishes(producer, clean, broker):
    job = producer.submit("ping", {"message": "hi"}, submitted_by="test")
    (row,) = rows(clean)
    assert row["id"] == job
    assert row["state"] == "queued"
    assert row["payload"] == {"message": "hi"}
    assert row["published_at"] is not None
    assert row["submitted_by"] == "test"
    assert job.published
    assert queue_length(broker) == 1


def test_bad_input_leaves_no_row(producer, clean, broker):
    with pytest.raises(UnknownKind):
        producer.submit("nope", {})
    with pytest.raises(InvalidPayload, match="message: Input should be a valid string"):
        producer.submit("ping", {"message": 5})
    small = Producer(clean.model_copy(update={"max_payload_bytes": 50}), registry=producer.registry)
    with pytest.raises(PayloadTooLarge, match="over the limit of 50 bytes"):
        small.submit("ping", {"message": "x" * 100})
    with pytest.raises(InvalidPayload, match="item 2: invalid payload"):
        producer.submit_many("ping", [{"message": "ok"}, {"message": 1}, {"message": "ok"}])
    assert rows(clean) == []
    assert queue_length(broker) == 0


def test_idempotency_key_returns_the_existing_job(producer, clean):
    first = producer.submit("ping", {}, idempotency_key="order-42")
    second = producer.submit("ping", {"message": "other"}, idempotency_key="order-42")
    assert second == first
    assert second.duplicate
    assert not first.duplicate
    assert len(rows(clean)) == 1


def test_session_joins_the_callers_transaction(producer, clean, broker):
    with Session(db.engine(clean)) as session:
        job = producer.submit("ping", {}, session=session)
        assert queue_length(broker) == 0  # nothing is published before the commit
        session.commit()
    assert [r["id"] for r in rows(clean)] == [job]
    assert queue_length(broker) == 1

    with Session(db.engine(clean)) as session:
        producer.submit("ping", {}, session=session)
        producer.submit_many("ping", [{}, {}], session=session)
        session.rollback()
    assert len(rows(clean)) == 1  # the rolled-back jobs never existed
    assert queue_length(broker) == 1  # and were never published


def test_delay_keeps_the_job_in_the_ledger(producer, clean, broker):
    job = producer.submit("ping", {}, delay=3600)
    (row,) = rows(clean)
    assert row["id"] == job
    assert row["state"] == "scheduled"
    assert row["not_before"] is not None
    assert queue_length(broker) == 0


def test_submit_many_inserts_all_and_publishes_all(producer, clean, broker):
    ids = producer.submit_many("ping", [{"message": str(n)} for n in range(250)], priority=2)
    assert len(set(ids)) == 250
    assert all(job.published for job in ids)
    assert len(rows(clean)) == 250
    assert queue_length(broker) == 250


def test_broker_down_keeps_the_job_and_the_relay_publishes_it(clean, registry, broker, maintenance):
    down = clean.model_copy(update={"broker_url": "redis://127.0.0.1:1/11", "publish_timeout": 0.5})
    job = Producer(down, registry=registry).submit("ping", {})
    assert not job.published
    (row,) = rows(clean)
    assert row["state"] == "queued"
    assert row["published_at"] is None
    assert queue_length(broker) == 0

    from beat.maintenance import Relay

    assert Relay(interval=1, grace=0).run(maintenance) == 1
    assert rows(clean)[0]["published_at"] is not None
    assert queue_length(broker) == 1


def test_job_ids_are_uuids_usable_as_celery_task_ids(producer, clean):
    job = producer.submit("ping", {})
    assert isinstance(job, uuid.UUID)
    assert str(uuid.UUID(str(job))) == str(job)
