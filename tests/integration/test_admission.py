"""Flow control's admission against the real ledger: held jobs, caps, rates, fairness, races."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa

from jobs import db, ledger, limit_store
from jobs.limits import Limit
from jobs.producer import Producer
from jobs.schema import jobs, limit_slots

pytestmark = pytest.mark.integration


def set_limits(settings, *limits: Limit) -> None:
    with db.transaction(settings) as conn:
        limit_store.ensure_declared(conn, limits)
    ledger.forget_targets()


def states(settings, ids) -> Counter[str]:
    with db.transaction(settings) as conn:
        rows = conn.execute(sa.select(jobs.c.state).where(jobs.c.id.in_(ids))).scalars()
        return Counter(rows)


def run_one(settings, job_id: uuid.UUID, *, succeed: bool = True) -> list[ledger.Published]:
    """A worker's attempt without a worker: claim, then finish and admit in one transaction."""
    with db.transaction(settings) as conn:
        claimed = ledger.claim(conn, job_id, worker="w", lease=60)
        assert claimed is not None
        assert claimed.limited
        if succeed:
            ledger.succeed(conn, job_id, claimed.attempt, {"ok": True})
        else:
            ledger.retry(conn, job_id, claimed.attempt, {"type": "E", "message": "m"}, 0.0)
        return ledger.release(conn, [job_id])


def test_a_cap_per_key_holds_the_rest_and_a_finish_admits_the_next(producer: Producer):
    settings = producer.settings
    set_limits(settings, Limit("per-tenant", concurrency=2, key="tenant", kind="test.tenant"))
    a = [producer.submit("test.tenant", {"tenant": "a", "n": n}) for n in range(5)]
    b = [producer.submit("test.tenant", {"tenant": "b", "n": n}) for n in range(2)]
    assert states(settings, a) == {"queued": 2, "held": 3}
    assert states(settings, b) == {"queued": 2}
    assert [job.published for job in a] == [True, True, False, False, False]
    admitted = run_one(settings, a[0])
    assert [item.id for item in admitted] == [a[2]]  # oldest first, same transaction
    assert states(settings, a) == {"succeeded": 1, "queued": 2, "held": 2}
    # A retry frees the slot as well; the retried job waits its turn again when due.
    admitted = run_one(settings, a[1], succeed=False)
    assert [item.id for item in admitted] == [a[3]]
    with db.transaction(settings) as conn:
        assert ledger.hold_due(conn) == 1  # the retry is due at once: held, not queued
        assert ledger.admit(conn) == []  # a[2] and a[3] hold both slots
    assert states(settings, [a[1]]) == {"held": 1}


def test_a_cancel_of_a_held_or_admitted_job_admits_the_next(producer: Producer):
    from jobs import control

    settings = producer.settings
    set_limits(settings, Limit("one", concurrency=1, kind="test.tenant"))
    ids = [producer.submit("test.tenant", {"tenant": "x", "n": n}) for n in range(3)]
    assert states(settings, ids) == {"queued": 1, "held": 2}
    control.cancel_many(settings, None, [ids[1]])  # type: ignore[arg-type]  # no running job: no revoke
    assert states(settings, ids) == {"queued": 1, "held": 1, "cancelled": 1}
    control.cancel_many(settings, None, [ids[0]])  # type: ignore[arg-type]
    assert states(settings, [ids[2]]) == {"queued": 1}
    with db.transaction(settings) as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(limit_slots)).scalar_one()
    assert left == 1  # only the unfinished job keeps a slot row


def test_a_rate_admits_the_burst_then_one_per_interval(producer: Producer):
    settings = producer.settings
    set_limits(settings, Limit("slow", rate="2/s", burst=1, kind="test.tenant"))
    ids = [producer.submit("test.tenant", {"tenant": "x", "n": n}) for n in range(6)]
    assert states(settings, ids) == {"queued": 2, "held": 4}  # burst 1: two at once
    with db.transaction(settings) as conn:
        assert ledger.admit(conn) == []  # no token yet
        conn.execute(sa.text("UPDATE limit_keys SET tat = tat - interval '1 second'"))
        assert len(ledger.admit(conn)) == 2  # a second later: two more
    assert states(settings, ids) == {"queued": 4, "held": 2}


def test_several_limits_all_must_admit(producer: Producer):
    settings = producer.settings
    set_limits(
        settings,
        Limit("per-tenant", concurrency=1, key="tenant", kind="test.tenant"),
        Limit("all", concurrency=2, kind="test.tenant"),
    )
    a = [producer.submit("test.tenant", {"tenant": "a", "n": n}) for n in range(3)]
    b = [producer.submit("test.tenant", {"tenant": "b", "n": n}) for n in range(3)]
    c = [producer.submit("test.tenant", {"tenant": "c", "n": n}) for n in range(3)]
    assert states(settings, a + b + c) == {"queued": 2, "held": 7}
    # The global cap serves the keys round-robin: c, whose turn it is, before a's second job.
    admitted = run_one(settings, a[0])
    assert [item.id for item in admitted] == [c[0]]


def test_the_global_cap_is_fair_across_keys(producer: Producer):
    settings = producer.settings
    set_limits(
        settings,
        Limit("all", concurrency=1, kind="test.tenant"),
        Limit("k", rate="1000/s", key="tenant", kind="test.tenant"),
    )
    big = producer.submit_many("test.tenant", [{"tenant": "big", "n": n} for n in range(200)])
    small = [producer.submit("test.tenant", {"tenant": "small", "n": n}) for n in range(3)]
    order: list[uuid.UUID] = [big[0]]
    current: uuid.UUID = big[0]
    for _ in range(6):
        admitted = run_one(settings, current)
        assert len(admitted) == 1
        current = admitted[0].id
        order.append(current)
    served = ["small" if job in small else "big" for job in order]
    assert served == ["big", "small", "big", "small", "big", "small", "big"]


def test_concurrent_admitters_never_exceed_the_cap(producer: Producer):
    settings = producer.settings
    set_limits(settings, Limit("cap", concurrency=3, kind="test.tenant"))
    ids = [producer.submit("test.tenant", {"tenant": "x", "n": n}) for n in range(60)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def admitter() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                with db.transaction(settings) as conn:
                    ledger.admit(conn)
        except BaseException as error:
            errors.append(error)

    with db.transaction(settings) as conn:
        # The admitted jobs end behind the ledger's back (no release): their slots stay taken,
        # so the cap is under-used, never exceeded, until the leader settles.
        conn.execute(sa.update(jobs).where(jobs.c.state == "queued").values(state="cancelled"))
        assert ledger.admit(conn) == []
    with db.transaction(settings) as conn:  # settled: every slot is free, four admitters race for them
        assert ledger.settle(conn) == 3
    threads = [threading.Thread(target=admitter) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert states(settings, ids)["queued"] == 3


def test_removing_a_limit_releases_its_held_jobs(producer: Producer):
    settings = producer.settings
    set_limits(settings, Limit("one", concurrency=1, kind="test.tenant"))
    ids = [producer.submit("test.tenant", {"tenant": "x", "n": n}) for n in range(3)]
    with db.transaction(settings) as conn:
        conn.execute(sa.text("DELETE FROM limits WHERE name = 'one'"))
        assert len(ledger.admit_orphans(conn)) == 2
    assert states(settings, ids) == {"queued": 3}


def test_unlimited_kinds_are_untouched(producer: Producer):
    set_limits(producer.settings, Limit("one", concurrency=1, kind="test.tenant"))
    job = producer.submit("ping", {})
    assert job.published
    assert states(producer.settings, [job]) == {"queued": 1}


def test_a_foreign_message_of_a_limited_kind_waits_held_and_is_admitted_like_any(clean, registry, broker):
    from tests.support.fixtures import queued_messages
    from workers import runner

    set_limits(clean, Limit("one", concurrency=1, kind="test.tenant"))
    first, second = uuid.uuid4(), uuid.uuid4()
    for job_id in (first, second):
        delivery = runner.Delivery(job_id, "test.tenant", {"tenant": "x"}, "default", 5, "w@h")
        with pytest.raises(runner.NotRun):  # acknowledged without running: the ledger's copy runs
            runner.run(clean, registry, delivery)
    assert states(clean, [first]) == {"queued": 1}  # admitted at once and published again
    assert states(clean, [second]) == {"held": 1}  # the cap is taken: it waits in the ledger
    assert queued_messages(broker) == 1


def test_a_worker_runs_limited_jobs_and_admits_the_next_in_its_finish(producer: Producer, worker):
    from tests.support.fixtures import wait_for_state

    settings = producer.settings
    set_limits(settings, Limit("one", concurrency=1, kind="test.tenant"))
    ids = [producer.submit("test.tenant", {"tenant": "x", "n": n}) for n in range(4)]
    for job_id in ids:  # no leader runs: each next job is admitted by the previous one's finish
        assert wait_for_state(settings, job_id, ("succeeded",), timeout=30)["state"] == "succeeded"
    with db.transaction(settings) as conn:
        starts = conn.execute(
            sa.select(jobs.c.started_at, jobs.c.finished_at)
            .where(jobs.c.id.in_(ids))
            .order_by(jobs.c.started_at)
        ).all()
        left = conn.execute(sa.select(sa.func.count()).select_from(limit_slots)).scalar_one()
    assert all(later.started_at >= earlier.finished_at for earlier, later in itertools.pairwise(starts))
    assert left == 0


def test_a_finish_frees_its_slots_in_one_statement_and_says_whether_jobs_wait(producer: Producer):
    settings = producer.settings
    set_limits(settings, Limit("two", concurrency=2, kind="test.tenant"))
    first, second, third = (producer.submit("test.tenant", {"tenant": "x", "n": n}) for n in range(3))
    with db.direct(settings) as direct, direct.transaction():
        claimed = ledger.claim(direct, first, worker="w", lease=60)
        assert claimed is not None
        assert ledger.succeed(direct, first, claimed.attempt, None) is not None
        assert ledger.free_slots(direct, first)  # the third waits behind the key it freed
    with db.transaction(settings) as conn:
        assert [item.id for item in ledger.release(conn, [second])] == []  # not finished: nothing to do
        conn.execute(sa.delete(jobs).where(jobs.c.id == third))
    with db.direct(settings) as direct, direct.transaction():
        claimed = ledger.claim(direct, second, worker="w", lease=60)
        assert claimed is not None
        ledger.succeed(direct, second, claimed.attempt, None)
        assert not ledger.free_slots(direct, second)  # nobody waits: one statement, no admission
    with db.transaction(settings) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(limit_slots)).scalar_one() == 0


def test_the_next_rate_token_tells_the_leader_when_to_admit_again(producer: Producer):
    settings = producer.settings
    set_limits(settings, Limit("slow", rate="2/s", kind="test.tenant"))
    with db.transaction(settings) as conn:
        assert ledger.next_token(conn) is None  # nobody waits
    ids = [producer.submit("test.tenant", {"tenant": "x", "n": n}) for n in range(3)]
    assert states(settings, ids) == {"queued": 1, "held": 2}
    with db.transaction(settings) as conn:
        wait = ledger.next_token(conn)
    assert wait is not None
    assert 0.0 <= wait <= 0.5  # one token per 0.5 s


def test_the_leaders_admitter_idles_without_limits_and_follows_a_rates_tokens(
    maintenance, producer: Producer
):
    from beat.maintenance import Admitter

    admitter = Admitter(interval=0.1)
    admitter.run(maintenance)
    assert admitter.interval == max(0.1, maintenance.settings.leader_tick)  # no limit: the usual tick
    set_limits(producer.settings, Limit("slow", rate="2/s", kind="test.tenant"))
    for n in range(3):
        producer.submit("test.tenant", {"tenant": "x", "n": n})
    admitter.run(maintenance)
    assert 0.0 < admitter.interval <= 0.1  # the next token is due within 0.5 s: at most the interval
