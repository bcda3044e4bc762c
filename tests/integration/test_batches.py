"""The batched worker's statements (``jobs.ledger.batches``) against the real ledger."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from jobs import db, ledger
from jobs.schema import job_attempts, jobs
from tests.support.fixtures import insert_job

pytestmark = pytest.mark.integration


def row(settings, job_id):
    with db.transaction(settings) as conn:
        return conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()


def attempts(settings, job_id):
    with db.transaction(settings) as conn:
        return conn.execute(
            sa.select(job_attempts).where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.attempt)
        ).all()


def test_one_statement_claims_every_queued_job_and_only_those(clean):
    queued = [insert_job(clean) for _ in range(5)]
    cancelled = insert_job(clean, "cancelled")
    scheduled = insert_job(clean, "scheduled")
    unknown = uuid.uuid4()
    with db.direct(clean) as direct:
        claimed = ledger.claim_batch(
            direct, [*queued, cancelled, scheduled, unknown, queued[0]], worker="w1", lease=60
        )
    assert set(claimed) == set(queued)
    for job_id in queued:
        assert claimed[job_id].attempt == 1
        assert claimed[job_id].kind == "ping"
        now = row(clean, job_id)
        assert (now.state, now.attempt, now.worker) == ("running", 1, "w1")
        assert now.lease_until is not None
        assert [(a.attempt, a.worker, a.outcome) for a in attempts(clean, job_id)] == [(1, "w1", None)]
    assert row(clean, cancelled).state == "cancelled"
    assert row(clean, scheduled).state == "scheduled"
    with db.direct(clean) as direct:  # a second batch with the same ids claims nothing
        assert ledger.claim_batch(direct, queued, worker="w2", lease=60) == {}


def test_two_batches_racing_for_the_same_jobs_claim_each_once(clean):
    ids = [insert_job(clean) for _ in range(30)]
    barrier = threading.Barrier(2)
    won: dict[str, dict[uuid.UUID, ledger.Claimed]] = {}

    def claim(worker: str, order: list[uuid.UUID]) -> None:
        barrier.wait()
        try:
            with db.direct(clean) as direct:
                won[worker] = ledger.claim_batch(direct, order, worker=worker, lease=60)
        finally:
            db.close_direct()  # this thread's own connection, closed before the thread ends

    threads = [
        threading.Thread(target=claim, args=("w1", ids)),
        threading.Thread(target=claim, args=("w2", list(reversed(ids)))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(won["w1"]) & set(won["w2"])
    assert set(won["w1"]) | set(won["w2"]) == set(ids)


def test_one_statement_records_every_success_with_its_attempt(clean):
    ids = [insert_job(clean) for _ in range(3)]
    with db.direct(clean) as direct:
        claimed = ledger.claim_batch(direct, ids, worker="w1", lease=60)
        stale = (ids[2], claimed[ids[2]].attempt + 1, '"late"')  # not this job's attempt
        finished = ledger.succeed_batch(direct, [(ids[0], 1, '{"pong": true}'), (ids[1], 1, None), stale])
    assert set(finished) == {ids[0], ids[1]}
    assert finished[ids[0]].kind == "ping"
    assert finished[ids[0]].ran is not None
    first, second, third = (row(clean, job_id) for job_id in ids)
    assert (first.state, first.result, first.lease_until) == ("succeeded", {"pong": True}, None)
    assert first.finished_at is not None
    assert (second.state, second.result) == ("succeeded", None)  # None is SQL NULL, as succeed() stores it
    assert third.state == "running"
    assert [(a.attempt, a.outcome) for a in attempts(clean, ids[0])] == [(1, "succeeded")]
    assert attempts(clean, ids[0])[0].finished_at == first.finished_at
    assert [(a.attempt, a.outcome) for a in attempts(clean, ids[2])] == [(1, None)]


def test_a_cancelled_job_is_not_recorded_succeeded(clean):
    job_id = insert_job(clean)
    with db.direct(clean) as direct:
        ledger.claim_batch(direct, [job_id], worker="w1", lease=60)
    with db.transaction(clean) as conn:
        assert ledger.cancel(conn, job_id) == "running"
    with db.direct(clean) as direct:
        assert ledger.succeed_batch(direct, [(job_id, 1, None)]) == {}
    assert row(clean, job_id).state == "cancelled"


def test_unclaim_undoes_the_attempt_of_a_job_that_never_started(clean):
    fresh = insert_job(clean, max_attempts=1)
    retried = insert_job(clean)
    with db.direct(clean) as direct:
        ledger.claim_batch(direct, [retried], worker="w0", lease=60)
        ledger.succeed_batch(direct, [])  # nothing to record: no statement, no error
    with db.transaction(clean) as conn:  # its first attempt failed; it is queued again
        conn.execute(sa.update(jobs).where(jobs.c.id == retried).values(state="queued", lease_until=None))
    with db.direct(clean) as direct:
        claimed = ledger.claim_batch(direct, [fresh, retried], worker="w1", lease=60)
        assert claimed[retried].attempt == 2
        assert ledger.unclaim(direct, [fresh, retried], worker="w2") == set()  # not its jobs
        assert ledger.unclaim(direct, [fresh, retried], worker="w1") == {fresh, retried}
    now = row(clean, fresh)
    assert (now.state, now.attempt, now.worker, now.started_at, now.lease_until) == (
        "queued",
        0,
        None,
        None,
        None,
    )
    assert attempts(clean, fresh) == []
    assert (row(clean, retried).state, row(clean, retried).attempt) == ("queued", 1)
    assert [a.attempt for a in attempts(clean, retried)] == [1]
    with db.direct(clean) as direct:  # the job on its only attempt is claimed again, not failed
        assert ledger.claim_batch(direct, [fresh], worker="w3", lease=60)[fresh].attempt == 1


def test_unclaim_lost_hands_the_jobs_back_for_the_relay_to_publish_again(clean):
    """The supervisor of a dead batched process: its messages are out of reach, so the jobs it
    never started are queued unpublished and handed back, for the relay (``take_unpublished``)."""
    waiting, ran = insert_job(clean, max_attempts=1), insert_job(clean)
    with db.direct(clean) as direct:
        ledger.claim_batch(direct, [waiting, ran], worker="w1", lease=60)
    with db.transaction(clean) as conn:
        assert ledger.unclaim_lost(conn, [waiting], worker="w2") == set()  # not its jobs
        assert ledger.unclaim_lost(conn, [waiting], worker="w1") == {waiting}
        assert ledger.unclaim_lost(conn, [waiting], worker="w1") == set()  # queued now: once only
    now = row(clean, waiting)
    assert (now.state, now.attempt, now.worker, now.published_at) == ("queued", 0, None, None)
    assert now.handed_back_at is not None
    assert attempts(clean, waiting) == []
    assert (row(clean, ran).state, row(clean, ran).attempt) == ("running", 1)  # its body ran: untouched


def test_renew_extends_the_leases_this_worker_still_holds(clean):
    ids = [insert_job(clean) for _ in range(2)]
    with db.direct(clean) as direct:
        ledger.claim_batch(direct, ids, worker="w1", lease=5)
    with db.transaction(clean) as conn:
        ledger.cancel(conn, ids[1])
    before = row(clean, ids[0]).lease_until
    with db.direct(clean) as direct:
        assert ledger.renew(direct, ids, worker="w2", lease=600) == set()
        assert ledger.renew(direct, ids, worker="w1", lease=600) == {ids[0]}
    assert (row(clean, ids[0]).lease_until - before).total_seconds() > 500


def test_end_leases_of_a_gone_worker_process(clean):
    ids = [insert_job(clean) for _ in range(3)]
    with db.direct(clean) as direct:
        ledger.claim_batch(direct, ids[:2], worker="gone", lease=600)
        ledger.claim_batch(direct, ids[2:], worker="alive", lease=600)
    with db.transaction(clean) as conn:
        assert ledger.end_leases_of(conn, "gone") == 2
        assert ledger.end_leases_of(conn, "gone") == 0  # already ended
    with db.transaction(clean) as conn:
        rescued = ledger.rescue_expired(conn)
    assert sorted(rescued) == sorted((job_id, "retrying") for job_id in ids[:2])
    assert row(clean, ids[2]).state == "running"
