"""Compare-and-set transitions under races, against the real ledger."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from jobs import db, ledger
from jobs.schema import job_attempts, jobs
from tests.support.fixtures import insert_job

pytestmark = pytest.mark.integration


def new_job(settings, state: str = "queued", max_attempts: int = 3) -> uuid.UUID:
    return insert_job(settings, state, max_attempts=max_attempts)


def row(settings, job_id):
    with db.transaction(settings) as conn:
        return conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()


def test_two_claimers_one_winner(clean):
    for _ in range(20):
        job_id = new_job(clean)
        barrier = threading.Barrier(2)
        won: list[ledger.Claimed | None] = []

        def claim(worker: str, job_id=job_id, barrier=barrier, won=won) -> None:
            barrier.wait()
            with db.transaction(clean) as conn:
                won.append(ledger.claim(conn, job_id, worker=worker, lease=60))

        threads = [threading.Thread(target=claim, args=(f"w{n}",)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(1 for c in won if c is not None) == 1
        assert row(clean, job_id).attempt == 1


def test_claim_refuses_finished_cancelled_and_not_due_jobs(clean):
    cancelled = new_job(clean)
    with db.transaction(clean) as conn:
        assert ledger.cancel(conn, cancelled) == "queued"
        assert ledger.cancel(conn, cancelled) is None  # terminal: never left
        assert ledger.claim(conn, cancelled, worker="w", lease=60) is None
        scheduled = new_job(clean, state="scheduled")
        assert ledger.claim(conn, scheduled, worker="w", lease=60) is None


def test_a_live_lease_blocks_a_second_claim_an_expired_one_does_not(clean):
    job_id = new_job(clean)
    with db.transaction(clean) as conn:
        first = ledger.claim(conn, job_id, worker="w1", lease=60)
        assert first is not None
        assert first.attempt == 1
        assert ledger.claim(conn, job_id, worker="w2", lease=60) is None
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(lease_until=sa.func.now() - sa.text("interval '1 second'"))
        )
        second = ledger.claim(conn, job_id, worker="w2", lease=60)
    assert second is not None
    assert second.attempt == 2
    with db.transaction(clean) as conn:
        history = conn.execute(
            sa.select(job_attempts.c.attempt, job_attempts.c.worker, job_attempts.c.outcome)
            .where(job_attempts.c.job_id == job_id)
            .order_by(job_attempts.c.attempt)
        ).all()
    assert [tuple(h) for h in history] == [(1, "w1", "lost"), (2, "w2", None)]


def test_finish_only_matches_the_current_attempt(clean):
    job_id = new_job(clean)
    with db.transaction(clean) as conn:
        ledger.claim(conn, job_id, worker="w1", lease=60)
        assert not ledger.succeed(conn, job_id, 2, {"stale": True})
        assert ledger.succeed(conn, job_id, 1, {"ok": True})
        assert not ledger.fail(conn, job_id, 1, {"type": "X", "message": "late"})
    final = row(clean, job_id)
    assert (final.state, final.result) == ("succeeded", {"ok": True})


def test_rescuer_retries_or_fails_jobs_whose_worker_died(clean):
    retried = new_job(clean, max_attempts=3)
    exhausted = new_job(clean, max_attempts=1)
    with db.transaction(clean) as conn:
        for job_id in (retried, exhausted):
            ledger.claim(conn, job_id, worker="dead", lease=60)
        conn.execute(sa.update(jobs).values(lease_until=sa.func.now() - sa.text("interval '1 second'")))
        rescued = dict(ledger.rescue_expired(conn))
    assert rescued == {retried: "retrying", exhausted: "failed"}
    assert row(clean, exhausted).error["type"] == "WorkerLost"
    assert row(clean, exhausted).finished_at is not None


def test_stager_moves_only_due_jobs(clean):
    due = new_job(clean, state="scheduled")
    later = new_job(clean, state="scheduled")
    with db.transaction(clean) as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == due).values(not_before=sa.func.now()))
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == later)
            .values(not_before=sa.func.now() + sa.text("interval '1 hour'"))
        )
        staged = ledger.stage_due(conn)
    assert [s.id for s in staged] == [due]
    assert row(clean, due).state == "queued"
    assert row(clean, later).state == "scheduled"
