"""The leader's maintenance loops against the real ledger."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from beat.maintenance import Pruner, Rescuer
from beat.runner import Runner
from jobs import db, pauses
from jobs.schema import jobs
from tests.support.fixtures import insert_job, queued_messages

pytestmark = pytest.mark.integration


def insert(settings, state: str, age_seconds: float) -> uuid.UUID:
    """A job created and (for a finished state) finished ``age_seconds`` ago."""
    job_id = insert_job(settings, state, max_attempts=1, age_seconds=age_seconds)
    with db.transaction(settings) as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(finished_at=jobs.c.created_at))
    return job_id


def remaining(settings) -> set[uuid.UUID]:
    with db.transaction(settings) as conn:
        return set(conn.execute(sa.select(jobs.c.id)).scalars())


def test_pruner_removes_old_finished_jobs_in_batches_and_keeps_failed_longer(maintenance, clean):
    old_ok = [insert(clean, "succeeded", 7200) for _ in range(25)]
    old_cancelled = insert(clean, "cancelled", 7200)
    recent_ok = insert(clean, "succeeded", 10)
    old_failed = insert(clean, "failed", 7200)
    ancient_failed = insert(clean, "failed", 90000)
    old_queued = insert(clean, "queued", 90000)  # never pruned: not finished

    removed = Pruner(60, retention_finished=3600, retention_failed=86400, batch=10).run(maintenance)

    assert removed == len(old_ok) + 2
    assert remaining(clean) == {recent_ok, old_failed, old_queued}
    assert ancient_failed not in remaining(clean)
    assert old_cancelled not in remaining(clean)


def test_runner_runs_each_loop_on_its_interval_and_survives_a_failing_loop(maintenance, clean):
    calls: list[str] = []

    class Broken:
        name, interval = "broken", 0.0

        def run(self, env):
            calls.append("broken")
            raise RuntimeError("bug in a loop")

    class Slow:
        name, interval = "slow", 3600.0

        def run(self, env):
            calls.append("slow")
            return 0

    runner = Runner(maintenance, [Broken(), Slow(), Rescuer(0.0)])
    runner.tick()
    runner.tick()
    assert calls == ["broken", "slow", "broken"]


def test_relay_publishes_what_never_reached_the_broker_once(maintenance, clean, broker):
    from beat.maintenance import Relay

    for _ in range(3):
        insert(clean, "queued", 60)
    fresh = insert(clean, "queued", 0)
    with db.transaction(clean) as conn:
        conn.execute(sa.update(jobs).values(finished_at=None, published_at=None))
    assert (
        Relay(interval=1, grace=5).run(maintenance) == 3
    )  # not the fresh one: its producer may still send it
    assert Relay(interval=1, grace=5).run(maintenance) == 0  # marked published: never twice
    assert queued_messages(broker) == 3
    with db.transaction(clean) as conn:
        assert conn.execute(sa.select(jobs.c.published_at).where(jobs.c.id == fresh)).scalar() is None


def test_republisher_sends_again_jobs_untouched_for_too_long(maintenance, clean, broker):
    from beat.maintenance import Republisher

    lost = insert(clean, "queued", 3600)  # published an hour ago (by its insert), never taken
    recent = insert(clean, "queued", 10)
    with db.transaction(clean) as conn:
        conn.execute(sa.update(jobs).values(finished_at=None, published_at=jobs.c.created_at))
    assert Republisher(interval=1, after=600).run(maintenance) == 1
    assert Republisher(interval=1, after=600).run(maintenance) == 0  # not again before another 600 s
    with db.transaction(clean) as conn:
        published = dict(conn.execute(sa.select(jobs.c.id, jobs.c.published_at)).all())
    assert published[lost] > published[recent]
    assert queued_messages(broker) == 1


def test_republisher_leaves_paused_queues_alone_and_the_redrive_does_not(maintenance, clean, broker):
    from beat.maintenance import Republisher
    from beat.redrive import SENTINEL, Redrive

    waiting = insert(clean, "queued", 3600)
    with db.transaction(clean) as conn:
        conn.execute(sa.update(jobs).values(published_at=jobs.c.created_at))
    assert pauses.pause(clean, "default", by="test")
    assert Republisher(interval=1, after=600).run(maintenance) == 0  # waiting on purpose
    assert queued_messages(broker) == 0
    Redrive(interval=1).run(maintenance)  # the ledger knows this broker
    broker.delete(SENTINEL)  # Redis lost its data: the paused queue's messages went too
    assert Redrive(interval=1).run(maintenance) == 1
    assert queued_messages(broker) == 1
    with db.transaction(clean) as conn:
        assert conn.execute(sa.select(jobs.c.id).where(jobs.c.state == "queued")).scalar() == waiting
