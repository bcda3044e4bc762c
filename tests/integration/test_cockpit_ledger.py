"""The cockpit's numbers against a real ledger and a real Redis: what each query counts."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from jobs import db, ledger, observe, wire
from jobs.broker import Depth, config, depths
from jobs.errors import BrokerUnavailable
from jobs.schema import job_attempts, jobs
from jobs.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def put(
    settings: Settings, state: str, *, queue: str = "cockpit", kind: str = "ping", **values: Any
) -> uuid.UUID:
    """A job written straight into the ledger, then given ``values`` (SQL expressions allowed)."""
    job_id = uuid.uuid4()
    with db.transaction(settings) as conn:
        ledger.insert_rows(
            conn,
            [
                {
                    "id": job_id,
                    "kind": kind,
                    "queue": queue,
                    "priority": values.pop("priority", 5),
                    "payload": {},
                    "state": state,
                    "max_attempts": 3,
                }
            ],
            idempotent=False,
        )
        if values:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
    return job_id


def ago(seconds: int) -> Any:
    return sa.func.now() - sa.text(f"interval '{seconds} seconds'")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_queue_stats_count_live_jobs_the_oldest_wait_and_the_last_minute(clean):
    put(clean, "queued", created_at=ago(300))
    put(clean, "queued", created_at=ago(30))
    # A retry that became due 10 s ago has waited 10 s, not since it was created an hour ago.
    put(clean, "queued", queue="other", created_at=ago(3600), not_before=ago(10))
    put(clean, "running", started_at=ago(5))
    put(clean, "scheduled", not_before=sa.func.now() + sa.text("interval '1 hour'"))
    put(clean, "succeeded", finished_at=ago(10))
    put(clean, "failed", finished_at=ago(20))
    put(clean, "succeeded", finished_at=ago(600))  # outside the window

    with db.transaction(clean) as conn:
        stats = observe.queue_stats(conn)

    cockpit = stats["cockpit"]
    assert cockpit.states == {"queued": 2, "running": 1, "scheduled": 1}
    assert 299 <= (cockpit.oldest_waiting or 0) < 330
    assert (cockpit.succeeded_recently, cockpit.failed_recently) == (1, 1)
    assert 9 <= (stats["other"].oldest_waiting or 0) < 40


def test_jobs_ahead_follow_priority_then_wait(clean):
    put(clean, "queued", priority=5, created_at=ago(100))
    put(clean, "queued", priority=0, created_at=ago(1))  # a more urgent job overtakes
    me = put(clean, "queued", priority=5, created_at=ago(50))
    put(clean, "queued", priority=5, created_at=ago(10))  # behind me
    put(clean, "queued", priority=9, created_at=ago(1000))  # less urgent
    put(clean, "queued", queue="elsewhere", priority=0, created_at=ago(1000))
    put(clean, "running", priority=0)

    with db.transaction(clean) as conn:
        assert observe.ahead_of(conn, me) == 2


def test_running_jobs_failures_and_activity(clean):
    lost = put(
        clean,
        "running",
        kind="test.sleep",
        worker="celery@ghost",
        attempt=1,
        started_at=ago(120),
        lease_until=ago(5),
        progress={"done": 1, "total": 4, "message": "step 2"},
    )
    put(clean, "running", worker="celery@a", attempt=1, started_at=ago(3), lease_until=ago(-60))
    failed = put(
        clean,
        "failed",
        kind="test.fail",
        attempt=3,
        finished_at=ago(5),
        error={"type": "RuntimeError", "message": "boom on attempt 3"},
    )
    with db.transaction(clean) as conn:
        for attempt in (1, 2, 3):
            conn.execute(
                sa.insert(job_attempts).values(
                    job_id=failed, attempt=attempt, outcome="error", finished_at=sa.func.now()
                )
            )
        running = observe.running_jobs(conn)
        failures = observe.recent_failures(conn)
        activity = observe.kind_activity(conn)
        attempts = observe.attempt_outcomes(conn)

    assert running[0].id == lost  # longest-running first
    assert (running[0].lease_left or 0) < 0
    assert running[0].progress == {"done": 1, "total": 4, "message": "step 2"}
    assert 119 <= running[0].runtime < 150
    assert (running[1].lease_left or 0) > 0
    assert [(f.id, f.error) for f in failures] == [(failed, "RuntimeError: boom on attempt 3")]
    assert [(a.kind, a.succeeded, a.failed) for a in activity] == [("test.fail", 0, 1)]
    assert attempts == {("test.fail", "error"): 3}


def test_redis_depths_count_every_priority_list_and_reserved_messages(clean, broker: redis.Redis):
    messages = [
        (
            wire.queue_key("cockpit", priority),
            wire.encode(uuid.uuid4(), "ping", "cockpit", priority, "{}", "{}"),
        )
        for priority in (0, 3, 5, 9, 9)
    ]
    wire.push(clean.broker_url, messages, timeout=2)
    broker.hset("unacked", "tag-1", '[{"body": ""}, "", "cockpit"]')
    try:
        found = depths(clean, ["cockpit", "empty"])
    finally:
        broker.hdel("unacked", "tag-1")
    assert found == {"cockpit": Depth("cockpit", 5, 1), "empty": Depth("empty", 0, 0)}


def test_redis_unreachable_is_one_clear_error(settings):
    closed = load_settings(broker_url=f"redis://127.0.0.1:{free_port()}/14")
    with pytest.raises(BrokerUnavailable, match=r"Redis is unreachable at 127\.0\.0\.1:\d+"):
        depths(closed, ["default"], timeout=0.5)
    with pytest.raises(BrokerUnavailable):
        config(closed, timeout=0.5)


def test_redis_config_is_read(settings):
    found = config(settings)
    assert found.maxmemory_policy is not None
    assert found.appendonly in ("yes", "no")
