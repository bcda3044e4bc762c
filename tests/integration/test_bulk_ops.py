"""Bulk cancel and retry (``jobs.control``) against the real ledger and broker."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from jobs import control, db, ledger
from jobs.app import get_app
from jobs.errors import BadInput, InvalidTransition, JobNotFound
from jobs.lookup import Filters
from jobs.schema import jobs
from tests.support.fixtures import effects, wait_for_state

pytestmark = pytest.mark.integration


def add_job(settings, state="queued", *, kind="ping", queue="default", age=0.0, payload=None):
    """A job written straight into the ledger, created ``age`` seconds ago."""
    job_id = uuid.uuid4()
    row = {
        "id": job_id,
        "kind": kind,
        "queue": queue,
        "priority": 5,
        "payload": payload or {},
        "state": state,
        "max_attempts": 1,
    }
    with db.transaction(settings) as conn:
        ledger.insert_rows(conn, [row], idempotent=False)
        created = sa.func.now() - sa.bindparam("age", timedelta(seconds=age), type_=sa.Interval)
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(created_at=created))
    return job_id


def states(settings, ids):
    with db.transaction(settings) as conn:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(ids))).all()
    return {row.id: row.state for row in rows}


def replays_of(settings, old):
    with db.transaction(settings) as conn:
        return list(conn.execute(sa.select(jobs.c.id).where(jobs.c.retry_of == old)).scalars())


def test_matching_selects_with_every_filter_oldest_first(clean):
    old = add_job(clean, age=7200)
    mid = add_job(clean, "scheduled", age=3600)
    new = add_job(clean, "retrying", age=10)
    other_kind = add_job(clean, kind="test.fail", age=10)
    other_queue = add_job(clean, queue="slow", age=10)
    add_job(clean, "succeeded", age=10)  # finished: never cancelled

    everything = control.matching(clean, Filters(kinds=["ping"], queues=["default"]), "cancel")
    assert [m.id for m in everything] == [old, mid, new]
    assert (everything[1].kind, everything[1].state, everything[1].queue) == ("ping", "scheduled", "default")

    now = datetime.now(UTC)
    window = Filters(since=now - timedelta(hours=1, minutes=30), until=now - timedelta(minutes=30))
    assert [m.id for m in control.matching(clean, window, "cancel")] == [mid]
    assert {m.id for m in control.matching(clean, Filters(states=["queued"]), "cancel")} == {
        old,
        other_kind,
        other_queue,
    }
    assert control.matching(clean, Filters(kinds=["nothing.like.this"]), "cancel") == []


@pytest.mark.parametrize(
    ("action", "filters", "message"),
    [
        ("cancel", Filters(states=["succeeded"]), "cannot cancel succeeded jobs"),
        ("retry", Filters(states=["queued"]), "cannot retry queued jobs"),
        (
            "cancel",
            Filters(since=datetime(2026, 2, 1, tzinfo=UTC), until=datetime(2026, 1, 1, tzinfo=UTC)),
            "--since must be before --until",
        ),
    ],
)
def test_matching_refuses_filters_that_cannot_mean_anything(clean, action, filters, message):
    with pytest.raises(BadInput, match=message):
        control.matching(clean, filters, action)


def test_cancel_many_works_in_batches_and_skips_what_finished_meanwhile(clean):
    queued = [add_job(clean) for _ in range(7)]
    finished = add_job(clean, "succeeded")
    seen: list[int] = []

    results = control.cancel_many(clean, get_app(), [*queued, finished], batch=3, progress=seen.append)

    assert seen == [3, 3, 2]
    assert [(r.id, r.was, r.state) for r in results] == [
        *[(job_id, "queued", "cancelled") for job_id in queued],
        (finished, None, "succeeded"),
    ]
    assert set(states(clean, queued).values()) == {"cancelled"}
    assert states(clean, [finished]) == {finished: "succeeded"}


def test_cancel_many_stops_running_jobs_and_their_work_rolls_back(producer, worker, clean):
    running = [producer.submit("test.effect", {"key": f"bulk-{n}", "sleep": 20}) for n in range(2)]
    wait_for_state(clean, running[0], states=("running",))

    results = control.cancel_many(clean, get_app(), running)

    assert {r.was for r in results} <= {"running", "queued"}
    for job_id in running:
        assert wait_for_state(clean, job_id)["state"] == "cancelled"
    time.sleep(0.5)  # the body notices ctx.cancelled() within 50 ms; the rolled-back write stays absent
    assert effects(clean, "bulk-0") == effects(clean, "bulk-1") == []


def test_single_cancel_keeps_its_errors(clean):
    done = add_job(clean, "failed")
    with pytest.raises(InvalidTransition, match="already failed"):
        control.cancel(clean, get_app(), done)
    with pytest.raises(JobNotFound):
        control.cancel(clean, get_app(), uuid.uuid4())


def test_replay_many_replays_each_job_once_even_when_run_twice(producer, clean):
    failed = [add_job(clean, "failed", kind="test.fail") for _ in range(5)]
    seen: list[int] = []

    first = control.replay_many(producer, failed, submitted_by="test", batch=2, progress=seen.append)

    assert seen == [2, 2, 1]
    assert [r.id for r in first] == failed
    assert all(r.new is not None and r.new.published for r in first)
    for result in first:
        assert replays_of(clean, result.id) == [result.new]
    assert set(states(clean, [r.new for r in first if r.new]).values()) == {"queued"}

    # Run twice: nothing new, each job names its earlier replay; the filter no longer selects them.
    second = control.replay_many(producer, failed)
    assert [(r.new, r.earlier) for r in second] == [(None, r.new) for r in first]
    assert all(r.skipped and r.skipped.startswith("already retried as") for r in second)
    assert control.matching(clean, Filters(kinds=["test.fail"]), "retry") == []
    assert all(len(replays_of(clean, job_id)) == 1 for job_id in failed)

    # The single form answers with the earlier replay.
    again = control.replay(producer, failed[0])
    assert again == first[0].new
    assert again.duplicate


def test_two_bulk_retries_at_once_still_make_one_replay_per_job(producer, clean):
    failed = [add_job(clean, "cancelled", kind="test.fail") for _ in range(40)]
    start = threading.Barrier(2)
    outcomes: list[list[control.Replayed]] = []

    def run() -> None:
        start.wait()
        outcomes.append(control.replay_many(producer, failed, batch=7))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(outcomes) == 2
    made = [r.new for outcome in outcomes for r in outcome if r.new is not None]
    assert len(made) == len(failed) == len(set(made))
    assert all(len(replays_of(clean, job_id)) == 1 for job_id in failed)


def test_replay_many_skips_what_it_cannot_replay_and_goes_on(producer, clean):
    gone = add_job(clean, "failed", kind="no.such.kind")
    bad = add_job(clean, "failed", kind="test.effect", payload={"unexpected": 1})
    queued = add_job(clean, "queued")
    good = add_job(clean, "failed")
    missing = uuid.uuid4()

    results = {r.id: r for r in control.replay_many(producer, [gone, bad, queued, good, missing])}

    assert results[good].new is not None
    assert "no.such.kind" in (results[gone].skipped or "")
    assert "key" in (results[bad].skipped or "")  # the payload no longer fits test.effect's model
    assert results[queued].skipped == "it is queued"
    assert results[missing].skipped == "no such job"
    assert replays_of(clean, gone) == replays_of(clean, bad) == []
    with pytest.raises(InvalidTransition, match="only failed or cancelled"):
        control.replay(producer, queued)
