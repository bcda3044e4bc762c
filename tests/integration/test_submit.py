"""The submit path against the real ledger and broker."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobs import db, ledger
from jobs.errors import IdempotencyConflict, InvalidJobOptions, InvalidPayload, PayloadTooLarge, UnknownKind
from jobs.producer import JobId, Producer
from jobs.schema import jobs

pytestmark = pytest.mark.integration


def rows(settings) -> list[dict[str, Any]]:
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
    # The options of a bulk submit are checked once, before any item: the error names no item.
    with pytest.raises(InvalidJobOptions, match=r"^priority 12 is out of range"):
        producer.submit_many("ping", [{"message": "ok"}] * 3, priority=12)
    with pytest.raises(InvalidJobOptions, match=r"^max attempts must be at least 1"):
        producer.submit_many("ping", [{"message": "ok"}] * 3, max_attempts=-1)
    assert rows(clean) == []
    assert queue_length(broker) == 0


def test_idempotency_key_returns_the_existing_job(producer, clean):
    first = producer.submit(
        "test.anything", {"value": {"a": 1, "b": [1.0, 1e23]}}, idempotency_key="order-42"
    )
    # The same payload after validation: key order, and numbers as JSON compares them (1.0 is 1).
    second = producer.submit("test.anything", {"value": {"b": [1, 1e23], "a": 1}}, idempotency_key="order-42")
    assert second == first
    assert second.duplicate
    assert not first.duplicate
    assert len(rows(clean)) == 1


def test_reusing_a_key_with_another_payload_or_kind_is_a_conflict(producer, clean):
    first = producer.submit("ping", {"message": "hi"}, idempotency_key="order-42")
    with pytest.raises(IdempotencyConflict, match=f"bound to job {first}, whose payload differs"):
        producer.submit("ping", {"message": "other"}, idempotency_key="order-42")
    with pytest.raises(
        IdempotencyConflict, match=f"bound to job {first} of kind 'ping', not 'test.anything'"
    ):
        producer.submit("test.anything", {"value": "hi"}, idempotency_key="order-42")
    assert [r["id"] for r in rows(clean)] == [first]
    # Payloads are compared as validated: for ping, {} is {"message": "pong"}.
    pong = producer.submit("ping", {}, idempotency_key="pong")
    assert producer.submit("ping", {"message": "pong"}, idempotency_key="pong") == pong
    with pytest.raises(IdempotencyConflict):
        producer.submit("ping", {"message": "hi"}, idempotency_key="pong")


def test_a_key_conflict_in_the_callers_transaction_leaves_it_usable(producer, clean):
    first = producer.submit("ping", {"message": "hi"}, idempotency_key="order-42")
    with Session(db.engine(clean)) as session:
        again = producer.submit("ping", {"message": "hi"}, idempotency_key="order-42", session=session)
        assert again == first
        assert again.duplicate
        with pytest.raises(IdempotencyConflict, match=str(first)):
            producer.submit("ping", {"message": "other"}, idempotency_key="order-42", session=session)
        mine = producer.submit("ping", {"message": "mine"}, idempotency_key="order-43", session=session)
        session.commit()
    assert {r["id"] for r in rows(clean)} == {first, mine}


def test_a_cancelled_jobs_key_stays_bound_to_it(producer, clean):
    first = producer.submit("ping", {"message": "hi"}, idempotency_key="nightly", delay=3600)
    with db.transaction(clean) as conn:
        assert ledger.cancel(conn, first) == "scheduled"
    again = producer.submit("ping", {"message": "hi"}, idempotency_key="nightly")
    assert again == first
    assert again.duplicate  # the cancelled job, which does not run again
    assert rows(clean)[0]["state"] == "cancelled"


@pytest.mark.parametrize("same", [True, False], ids=["same-payload", "different-payloads"])
def test_two_concurrent_submitters_of_one_key_get_one_job(producer, clean, same):
    """Both INSERTs race for the key; the loser waits on the winner's row, then compares with it."""
    ready = threading.Barrier(2)
    hold = threading.Event()
    outcomes: dict[str, JobId | IdempotencyConflict] = {}

    def first() -> None:
        with Session(db.engine(clean)) as session:
            outcomes["first"] = producer.submit(
                "ping", {"message": "a"}, idempotency_key="k", session=session
            )
            ready.wait(timeout=10)
            hold.wait(timeout=10)  # the second submitter is blocked on this uncommitted row meanwhile
            session.commit()

    def second() -> None:
        ready.wait(timeout=10)
        try:
            outcomes["second"] = producer.submit(
                "ping", {"message": "a" if same else "b"}, idempotency_key="k"
            )
        except IdempotencyConflict as error:
            outcomes["second"] = error

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    wait_until(lambda: blocked_on_a_lock(clean), timeout=10)
    hold.set()
    for thread in threads:
        thread.join(timeout=20)
    assert [r["id"] for r in rows(clean)] == [outcomes["first"]]
    if same:
        assert outcomes["second"] == outcomes["first"]
        assert isinstance(outcomes["second"], JobId)
        assert outcomes["second"].duplicate
    else:
        assert isinstance(outcomes["second"], IdempotencyConflict)
        assert str(outcomes["first"]) in str(outcomes["second"])


def blocked_on_a_lock(settings) -> bool:
    with db.transaction(settings) as conn:
        waiting = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO jobs%'"
            )
        ).scalar_one()
    return bool(waiting)


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_published_at_is_stamped_on_the_servers_clock(producer, clean):
    """created_at is the server's now(); published_at was the producer's clock, and could precede it."""
    producer.submit("ping", {})
    with Session(db.engine(clean)) as session:
        producer.submit("ping", {}, session=session)
        producer.submit_many("ping", [{}, {}], session=session)
        session.commit()
    producer.submit_many("ping", [{}] * 3)
    stamped = rows(clean)
    assert len(stamped) == 7
    for row in stamped:
        assert row["published_at"] is not None
        assert row["published_at"] >= row["created_at"], row
    # Each transaction's rows share one now(): the COPY's rows too.
    assert len({row["published_at"] for row in stamped}) == 3


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


def test_a_delayed_bulk_submit_is_due_at_one_time(producer, clean, broker):
    """The delay of a bulk submit counts from the call: every job of it is due at once."""
    ids = producer.submit_many("ping", [{"message": str(n)} for n in range(50)], delay=3600)
    found = rows(clean)
    assert {row["id"] for row in found} == set(ids)
    assert {row["state"] for row in found} == {"scheduled"}
    assert len({row["not_before"] for row in found}) == 1
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


def _new_job(**columns: Any) -> ledger.NewJob:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "kind": "ping",
        "queue": "default",
        "priority": 5,
        "payload": {"message": "héllo", "nested": {"list": [1, 2.5, None, "x"]}},
        "state": "queued",
        "max_attempts": 3,
    }
    values.update(columns)
    return ledger.NewJob(**values)


@pytest.mark.parametrize(
    "columns",
    [
        {"published_at": ledger.SERVER_NOW, "submitted_by": "test"},
        {"state": "scheduled", "not_before": None, "published_at": None},
        {"published_at": ledger.SERVER_NOW, "idempotency_key": "same-key"},
        {"published_at": ledger.SERVER_NOW, "schedule_name": "nightly", "schedule_slot": "slot"},
        {"published_at": ledger.SERVER_NOW, "unique_key": "u-1", "debounce_key": None, "limited": True},
    ],
    ids=["published", "delayed", "idempotent", "schedule-firing", "unique"],
)
def test_the_single_insert_writes_the_row_the_bulk_insert_writes(clean, columns):
    """``insert_one`` (the single submit's statement, sent as text) and ``insert_rows`` agree on
    every column of the row they create."""
    if columns.get("schedule_slot") == "slot":
        columns["schedule_slot"] = ledger_now(clean)
    if columns.get("state") == "scheduled":
        columns["not_before"] = ledger_now(clean)
    one, many = _new_job(**columns), _new_job(**columns)
    if "idempotency_key" in columns:
        many.idempotency_key = "other-key"
    if "schedule_name" in columns:
        many.schedule_name = "hourly"
    if "unique_key" in columns:
        many.unique_key = "u-2"
    key = one.idempotency_key is not None
    with db.autocommit(clean) as conn:
        assert ledger.insert_one(conn, one, idempotent=key)
        scheduled = many.schedule_name is not None
        assert ledger.insert_rows(conn, [many.columns()], idempotent=key, scheduled=scheduled)
    by_id = {row["id"]: row for row in rows(clean)}
    first, second = by_id[one.id], by_id[many.id]
    differ = {"id", "created_at", "published_at", "idempotency_key", "schedule_name", "unique_key"}
    assert {k: v for k, v in first.items() if k not in differ} == {
        k: v for k, v in second.items() if k not in differ
    }
    assert (first["published_at"] is None) == (second["published_at"] is None)
    if first["published_at"] is not None:
        assert first["published_at"] == first["created_at"]  # the statement's now(), the server's clock
    assert first["payload"] == one.payload
    for name in ("idempotency_key", "schedule_name", "unique_key"):
        assert first[name] == getattr(one, name)


def test_the_single_insert_yields_to_a_key_or_a_slot_taken(clean):
    """A second job with a taken idempotency key, or a second firing of a schedule's slot, is not
    inserted: ``insert_one`` says so and the ledger keeps the first."""
    slot = ledger_now(clean)
    keyed = _new_job(published_at=ledger.SERVER_NOW, idempotency_key="k")
    fired = _new_job(published_at=ledger.SERVER_NOW, schedule_name="nightly", schedule_slot=slot)
    with db.autocommit(clean) as conn:
        assert ledger.insert_one(conn, keyed, idempotent=True)
        assert ledger.insert_one(conn, fired, idempotent=False)
        again_keyed = _new_job(published_at=ledger.SERVER_NOW, idempotency_key="k")
        again_fired = _new_job(published_at=ledger.SERVER_NOW, schedule_name="nightly", schedule_slot=slot)
        assert not ledger.insert_one(conn, again_keyed, idempotent=True)
        assert not ledger.insert_one(conn, again_fired, idempotent=False)
    assert {row["id"] for row in rows(clean)} == {keyed.id, fired.id}


def ledger_now(settings) -> Any:
    with db.autocommit(settings) as conn:
        return conn.execute(sa.select(sa.func.now())).scalar_one()
