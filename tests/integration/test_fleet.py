"""The fleet against the real ledger and Redis: the roster, jobs handed back, foreign messages,
reclaimed reservations, the broker's epoch, and the quarantine in a real worker."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from beat.maintenance import Relay
from beat.reclaim import Reclaimer
from beat.redrive import SENTINEL, Redrive
from jobs import broker as broker_side
from jobs import db, ledger, roster, wire
from jobs.schema import broker_epochs, job_attempts, jobs
from jobs.settings import Settings
from tests.support.fixtures import insert_job, queued_messages, wait_for_state
from workers import runner, unknown

pytestmark = pytest.mark.integration


def member(name: str, kinds: dict[str, str], *, queues: tuple[str, ...] = ("default",)) -> roster.Member:
    return roster.Member(
        name=name, host="h", pid=1, queues=queues, kinds=kinds, pool="prefork", concurrency=2
    )


def enlist(settings: Settings, who: roster.Member) -> None:
    with db.transaction(settings) as conn:
        roster.enlist(conn, who)


def row(settings: Settings, job_id: uuid.UUID) -> dict[str, Any]:
    with db.transaction(settings) as conn:
        found = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()
    return dict(found._mapping)


def age_heartbeat(settings: Settings, name: str, seconds: float) -> None:
    with db.transaction(settings) as conn:
        conn.execute(
            sa.text("UPDATE workers SET heartbeat_at = now() - make_interval(secs => :s) WHERE name = :n"),
            {"s": seconds, "n": name},
        )


@pytest.fixture
def fresh_roster(clean: Settings) -> Settings:
    """No worker in the roster, for tests that count them (the roster outlives ``clean``)."""
    with db.transaction(clean) as conn:
        conn.execute(sa.text("TRUNCATE workers, fleet_kinds"))
    return clean


def test_the_roster_knows_who_is_alive_and_what_it_implements(fresh_roster):
    settings = fresh_roster
    enlist(settings, member("w1@h", {"ping": "schema:1", "greetings.greet": "2"}))
    enlist(settings, member("w2@h", {"ping": "schema:1"}, queues=("images",)))
    with db.transaction(settings) as conn:
        assert [m.name for m in roster.members(conn, dead_after=30)] == ["w1@h", "w2@h"]
        assert [m.name for m in roster.implementers(conn, "greetings.greet", dead_after=30)] == ["w1@h"]
        assert roster.ever_implemented(conn, ["ping", "greetings.greet", "nope"]) == {
            "ping",
            "greetings.greet",
        }
        roster.retire(conn, "w2@h")
    age_heartbeat(settings, "w1@h", 60)
    with db.transaction(settings) as conn:
        assert roster.members(conn, dead_after=30) == []
        listed = {m.name: m for m in roster.members(conn, dead_after=30, include_dead=True)}
        assert not listed["w1@h"].alive
        assert listed["w2@h"].stopped_at is not None
        assert roster.heartbeat(conn, "w1@h")  # alive again
        assert not roster.heartbeat(conn, "never@h")  # no row: the worker enlists again
        assert [m.name for m in roster.members(conn, dead_after=30)] == ["w1@h"]
    with db.transaction(settings) as conn:
        # Gone from the roster, the kinds stay known to the fleet.
        assert roster.prune(conn, older_than=0) == 2
        assert roster.ever_implemented(conn, ["greetings.greet"]) == {"greetings.greet"}


def test_a_job_handed_back_waits_until_a_live_worker_implements_its_kind(maintenance, fresh_roster, broker):
    settings = fresh_roster
    job = insert_job(settings, "queued")
    with db.transaction(settings) as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job).values(kind="greetings.greet"))
        assert ledger.hand_back(conn, job)
    relay = Relay(interval=1, grace=0)

    assert relay.run(maintenance) == 0  # nobody implements it: it stays in the ledger
    enlist(settings, member("old@h", {"ping": "1"}))
    enlist(settings, member("other-queue@h", {"greetings.greet": "1"}, queues=("images",)))
    assert relay.run(maintenance) == 0
    enlist(settings, member("new@h", {"greetings.greet": "1"}))
    age_heartbeat(settings, "new@h", 60)
    assert relay.run(maintenance) == 0  # its only implementer on the queue is dead
    enlist(settings, member("new@h", {"greetings.greet": "1"}))

    assert relay.run(maintenance) == 1
    found = row(settings, job)
    assert (found["state"], found["attempt"]) == ("queued", 0)
    assert found["published_at"] is not None
    assert queued_messages(broker) == 1
    with db.transaction(settings) as conn:
        assert not ledger.hand_back(conn, job) or True  # a second bounce is as harmless as the first


def foreign(
    kind: str, payload: dict[str, Any] | None = None, job_id: uuid.UUID | None = None
) -> unknown.Foreign:
    return unknown.Foreign(job_id or uuid.uuid4(), kind, "default", 5, payload or {})


def test_a_worker_that_lacks_a_kind_hands_back_queued_jobs_and_leaves_others(fresh_roster):
    settings = fresh_roster
    queued = insert_job(settings, "queued")
    running = insert_job(settings, "running")

    outcome = unknown.handle(settings, foreign("ping", job_id=queued))
    assert outcome.what == "handed_back"
    assert "no live worker implements it" in outcome.detail
    handed = row(settings, queued)
    assert (handed["state"], handed["attempt"], handed["published_at"]) == ("queued", 0, None)
    assert handed["handed_back_at"] is not None
    with db.transaction(settings) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(job_attempts)).scalar_one() == 0

    assert unknown.handle(settings, foreign("ping", job_id=running)).what == "stale"
    assert row(settings, running)["state"] == "running"


def test_a_foreign_message_waits_if_the_fleet_ever_implemented_its_kind_else_fails(fresh_roster):
    settings = fresh_roster
    enlist(settings, member("gone@h", {"greetings.greet": "1"}))
    with db.transaction(settings) as conn:
        roster.retire(conn, "gone@h")

    known = foreign("greetings.greet", {"name": "Ada"})
    outcome = unknown.handle(settings, known)
    assert outcome.what == "adopted"
    adopted = row(settings, known.job_id)
    assert (adopted["state"], adopted["submitted_by"], adopted["payload"]) == (
        "queued",
        "adopted",
        {"name": "Ada"},
    )
    assert adopted["handed_back_at"] is not None
    assert unknown.handle(settings, known).what == "handed_back"  # a copy of it: still one row

    never = foreign("no.such.kind", {"x": 1})
    outcome = unknown.handle(settings, never)
    assert outcome.what == "failed"
    refused = row(settings, never.job_id)
    assert (refused["state"], refused["attempt"]) == ("failed", 0)
    assert refused["error"]["message"] == (
        "unknown kind 'no.such.kind': no worker of this fleet has ever implemented it"
    )
    assert unknown.handle(settings, never).what == "stale"


def test_a_foreign_message_the_ledger_cannot_store_is_kept_escaped(fresh_roster):
    settings = fresh_roster
    nul = foreign("no.such.kind", {"text": "a\x00b", "k\x00": ["\ud800"]})
    outcome = unknown.handle(settings, nul)
    assert outcome.what == "failed"
    refused = row(settings, nul.job_id)
    assert refused["payload"] == {"text": "a\\u0000b", "k\\u0000": ["\\ud800"]}
    assert refused["error"]["type"] == "InvalidPayload"
    assert "payload.text: contains a NUL character" in refused["error"]["message"]

    odd = unknown.parse({"id": "not-a-uuid", "task": "ping"}, {"routing_key": "default"}, {}, None, "default")
    assert odd is not None
    assert unknown.handle(settings, odd).what == "failed"
    recorded = row(settings, unknown.job_id_of("not-a-uuid")[0])
    assert "task id 'not-a-uuid' is not a UUID" in recorded["error"]["message"]


def test_a_foreign_message_of_a_known_kind_with_a_nul_is_recorded_not_dropped(clean, registry):
    job_id = uuid.uuid4()
    delivery = runner.Delivery(job_id, "ping", {"message": "a\x00b"}, "default", 5, "w@h")
    with pytest.raises(runner.AttemptFailed):  # Flower shows it failed, as the ledger does
        runner.run(clean, registry, delivery)
    refused = row(clean, job_id)
    assert (refused["state"], refused["payload"]) == ("failed", {"message": "a\\u0000b"})
    assert "payload.message: contains a NUL character" in refused["error"]["message"]


def hold(client, job_id: uuid.UUID, kind: str, *, age: float, tag: str | None = None) -> str:
    """Put a message in kombu's unacknowledged set, as a worker that took it ``age`` seconds ago."""
    tag = tag or str(uuid.uuid4())
    message = json.loads(wire.encode(job_id, kind, "default", 0, "{}", "{}"))
    client.hset(broker_side.UNACKED, tag, json.dumps([message, "", "default"]))
    client.zadd(broker_side.UNACKED_INDEX, {tag: time.time() - age})
    return tag


def test_the_reclaimer_puts_back_what_a_lost_worker_reserved_after_its_lease(maintenance, clean, broker):
    lease = clean.lease_seconds
    reserved = insert_job(clean, "queued")
    young = insert_job(clean, "queued")
    running = insert_job(clean, "running")
    old_tag = hold(broker, reserved, "ping", age=lease + 5)
    young_tag = hold(broker, young, "ping", age=lease - 5)
    running_tag = hold(broker, running, "ping", age=lease + 5)
    stranger = uuid.uuid4()  # a foreign message its worker never adopted
    hold(broker, stranger, "ping", age=lease + 5)
    hold(broker, uuid.uuid4(), "ping", age=lease + 5, tag="acked")
    broker.hdel(broker_side.UNACKED, "acked")  # acknowledged meanwhile: only the index remains

    try:
        assert Reclaimer(interval=5).run(maintenance) == 2
        assert queued_messages(broker) == 2
        assert not broker.hexists(broker_side.UNACKED, old_tag)
        assert broker.hexists(broker_side.UNACKED, young_tag)
        assert broker.hexists(broker_side.UNACKED, running_tag)  # its lease decides, not this loop
        restored = [json.loads(item) for item in broker.lrange("default", 0, -1)]
        assert {item["headers"]["id"] for item in restored} == {str(reserved), str(stranger)}
        assert all(item["headers"]["redelivered"] for item in restored)
        assert Reclaimer(interval=5).run(maintenance) == 0
    finally:
        broker.delete(broker_side.UNACKED, broker_side.UNACKED_INDEX)


def test_a_first_meeting_with_a_broker_redrives_nothing_and_a_loss_redrives_all(
    maintenance, clean, broker, caplog
):
    waiting = insert_job(clean, "queued")
    with db.transaction(clean) as conn:  # its message went out (to the broker that loses it below)
        conn.execute(sa.update(jobs).values(published_at=jobs.c.created_at))
    broker.delete(SENTINEL)
    redrive = Redrive(interval=1)
    with caplog.at_level(logging.INFO, logger="jobs.beat"):
        assert redrive.run(maintenance) == 0
    assert queued_messages(broker) == 0
    assert broker.exists(SENTINEL)
    assert "first meeting with the broker" in caplog.text
    assert "lost its data" not in caplog.text
    with db.transaction(clean) as conn:
        assert conn.execute(sa.select(broker_epochs.c.broker)).scalars().all() == [
            "redis://127.0.0.1:6379/" + clean.broker_url.rsplit("/", 1)[1]
        ]

    caplog.clear()
    assert redrive.run(maintenance) == 0  # the sentinel is there: nothing to do
    broker.delete(SENTINEL)
    with caplog.at_level(logging.WARNING, logger="jobs.beat"):
        assert redrive.run(maintenance) == 1
    assert "lost its data" in caplog.text
    assert queued_messages(broker) == 1
    assert row(clean, waiting)["state"] == "queued"


def test_a_worker_quarantines_malformed_items_and_keeps_working(producer, worker, clean, broker):
    broker.delete(broker_side.QUARANTINE, broker_side.QUARANTINED)
    broker.lpush("default", b"", b"\x00garbage", b"[1, 2]", b'{"properties": {}}', b"x" * 100_000)
    job = producer.submit("ping", {"message": "after the garbage"})

    assert wait_for_state(clean, job)["state"] == "succeeded"
    held = broker_side.quarantined(broker)
    assert (held.kept, held.total) == (5, 5)
    assert held.newest is not None
    assert len(broker.lindex(broker_side.QUARANTINE, 0) or b"") == broker_side.QUARANTINE_ITEM_BYTES
    broker.delete(broker_side.QUARANTINE, broker_side.QUARANTINED)
