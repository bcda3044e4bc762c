"""Scenarios 21-24: flow control under faults. A cap is never exceeded, held jobs are never lost.

Every scenario runs ``test.tenant`` jobs under a concurrency cap and measures the cap three ways:

- **sampled**: a thread reads the ledger every 50 ms (admitted slots of unfinished jobs, and the
  jobs ``queued`` or ``running``), as an operator's query would;
- **the ledger's history**: the attempts' intervals (``job_attempts``, claim to finish, or to the
  rescue of a lost attempt) overlap at most ``cap`` deep;
- **the bodies**: each start row (``test_effects``, committed as the body begins) plus the
  seconds the body sleeps is when a body really ran; those intervals overlap at most ``cap`` deep.

The checker (``tests.faults.checker``) runs after each, as after every scenario: every job
terminal (a ``held`` job is unfinished, not lost), and no finished job keeps a slot.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import ledger, publisher
from jobs.limits import Limit
from jobs.schema import job_attempts, jobs, limit_slots
from tests.faults.harness import Platform
from tests.support.limits import remove_limits, set_limit

pytestmark = pytest.mark.acceptance

LIMIT = "flow-cap"


@pytest.fixture
def cap(private: Platform) -> Iterator[Any]:
    """Sets the scenario's cap on ``test.tenant``; removes it after the checker has run."""

    def set_cap(concurrency: int) -> None:
        set_limit(private.settings, Limit(LIMIT, concurrency=concurrency, kind="test.tenant"))

    yield set_cap
    private.heal()
    remove_limits(private.settings, LIMIT)


class Watch:
    """Samples the ledger every ``every`` seconds in a thread: the most admitted-unfinished jobs
    of the cap, and the most ``test.tenant`` jobs queued or running, seen in any snapshot."""

    def __init__(self, platform: Platform, every: float = 0.05) -> None:
        self.platform = platform
        self.every = every
        self.admitted = 0
        self.active = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        admitted = (
            sa.select(sa.func.count())
            .select_from(limit_slots.join(jobs, jobs.c.id == limit_slots.c.job_id))
            .where(
                limit_slots.c.limit_name == LIMIT,
                limit_slots.c.admitted_at.is_not(None),
                jobs.c.state.in_(("queued", "running")),
            )
        )
        active = sa.select(sa.func.count()).where(
            jobs.c.kind == "test.tenant", jobs.c.state.in_(("queued", "running"))
        )
        while not self._stop.wait(self.every):
            try:
                with self.platform.ledger() as conn:
                    self.admitted = max(self.admitted, conn.execute(admitted).scalar_one())
                    self.active = max(self.active, conn.execute(active).scalar_one())
                self.samples += 1
            except Exception:  # PostgreSQL may be away: that moment has no sample
                continue

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def deepest(intervals: Sequence[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (one that ends as another starts: not both)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    depth = most = 0
    for _, step in events:
        depth += step
        most = max(most, depth)
    return most


def ledger_depth(platform: Platform, ids: Sequence[uuid.UUID]) -> int:
    """How many of these jobs' attempts the ledger had open at once (open ones: until now)."""
    with platform.ledger() as conn:
        rows = conn.execute(
            sa.select(
                job_attempts.c.started_at,
                sa.func.coalesce(job_attempts.c.finished_at, sa.func.now()),
            ).where(job_attempts.c.job_id.in_(ids))
        ).all()
    return deepest([(start, end) for start, end in rows])


def starts(platform: Platform, tenant: str) -> list[tuple[uuid.UUID, int, datetime]]:
    """Each body's start (job, attempt, when), from the rows ``test.tenant`` commits as it begins."""
    with platform.ledger() as conn:
        rows = conn.execute(
            sa.text("SELECT job_id, attempt, at FROM test_effects WHERE key = :k ORDER BY at"), {"k": tenant}
        ).all()
    return [(row.job_id, row.attempt, row.at) for row in rows]


def body_depth(platform: Platform, tenant: str, seconds: float) -> int:
    """How many bodies ran at once: each from its start row for the seconds it sleeps."""
    return deepest([(at, at + timedelta(seconds=seconds)) for _, _, at in starts(platform, tenant)])


def submit(platform: Platform, tenant: str, count: int, seconds: float) -> list[uuid.UUID]:
    ids = platform.producer.submit_many(
        "test.tenant", [{"tenant": tenant, "seconds": seconds, "n": n} for n in range(count)]
    )
    platform.workload.accept(*ids)
    return list(ids)


def states(platform: Platform, ids: Sequence[uuid.UUID]) -> Counter[str]:
    with platform.ledger() as conn:
        found = conn.execute(sa.select(jobs.c.state).where(jobs.c.id.in_(ids))).scalars()
        return Counter(found)


def states_by_id(platform: Platform, ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    with platform.ledger() as conn:
        return dict(conn.execute(sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(ids))).all())


def wait_running(platform: Platform, ids: Sequence[uuid.UUID], count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while states(platform, ids)["running"] < count:
        assert time.monotonic() < deadline, f"{count} not running in {timeout}s: {states(platform, ids)}"
        platform.supervise()
        time.sleep(0.05)


def finish_all(platform: Platform, ids: Sequence[uuid.UUID], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [platform.wait(job, timeout=max(1.0, deadline - time.monotonic())) for job in ids]


def test_21_sigkill_of_a_worker_whose_jobs_hold_the_slots_of_a_cap(cap, faults: Platform) -> None:
    cap(2)
    faults.processes.stop("worker")  # the victim alone takes the admitted jobs
    faults.start_worker("victim", "-c", "2")
    ids = submit(faults, "s21", 8, 1.5)
    with Watch(faults) as watch:
        wait_running(faults, ids, 2)
        mark = faults.log_mark("beat")
        faults.kill("victim", signal.SIGKILL)
        with faults.ledger() as conn:
            killed_at = conn.execute(sa.select(sa.func.now())).scalar_one()
        killed = time.monotonic()
        faults.forget("victim")
        faults.start_worker("worker")
        rows = finish_all(faults, ids, timeout=60)
        recovered = time.monotonic() - killed
    later = [at for _, attempt, at in starts(faults, "s21") if at > killed_at]
    back = (min(later) - killed_at).total_seconds()
    rescued = faults.log_since("beat", mark).count("lost its worker")
    depth, bodies = ledger_depth(faults, ids), body_depth(faults, "s21", 1.5)
    print(
        f"worker SIGKILL holding both slots of a cap of 2: {rescued} job(s) rescued by the leader, the next"
        f" start {back:.1f}s later, all 8 done in {recovered:.1f}s; most admitted {watch.admitted}, queued"
        f" or running {watch.active} ({watch.samples} samples), attempts open at once {depth}, bodies at"
        f" once {bodies}"
    )
    assert [row["state"] for row in rows] == ["succeeded"] * 8
    assert sorted(row["attempt"] for row in rows) == [1] * 6 + [2] * 2  # the two killed ran again
    assert max(watch.admitted, watch.active, depth, bodies) <= 2
    # The slots come back with the rescue: the lease (6 s) plus a rescuer round (5 s), with room
    # for a busy machine; without it they would wait for nothing, the cap stays full forever.
    assert back < faults.settings.lease_seconds + 5 + 6, back


def test_22_redis_restarted_empty_while_jobs_wait_on_a_limit(cap, faults: Platform) -> None:
    cap(2)
    ids = submit(faults, "s22", 20, 0.5)
    with Watch(faults) as watch:
        wait_running(faults, ids, 2)
        messages: set[uuid.UUID] = set()
        for _ in range(10):  # a message exists only after its job's admission committed: read it first
            seen = faults.on_broker()
            messages |= seen
            assert not {job for job, state in states_by_id(faults, seen).items() if state == "held"}
            time.sleep(0.1)
        # No worker for a moment: the two running jobs finish and admit two more, which wait on the
        # broker (queued), and the restart loses their messages.
        faults.processes.stop("worker")
        before = states(faults, ids)
        admitted = faults.on_broker()
        queued = {job for job, state in states_by_id(faults, set(ids)).items() if state == "queued"}
        mark = faults.log_mark("beat")
        faults.redis.restart_empty()
        restarted = time.monotonic()
        after = states(faults, ids)
        redriven = faults.wait_log_since("beat", mark, "queued job(s) published again", timeout=20)
        faults.start_worker("worker")
        rows = finish_all(faults, ids, timeout=90)
        recovered = time.monotonic() - restarted
    depth, bodies = ledger_depth(faults, ids), body_depth(faults, "s22", 0.5)
    print(
        f"Redis restarted empty with {before['queued']} admitted jobs queued and {before['held']} held:"
        f" {after['held']} still held after it; {len(messages)} jobs' messages seen on the broker before"
        f" it, none of them held; the queued ones published again {redriven:.1f}s after it, all 20 done"
        f" {recovered:.1f}s after it (with a worker started meanwhile); most admitted {watch.admitted},"
        f" queued or running {watch.active}, attempts open at once {depth}, bodies at once {bodies}"
    )
    assert before["queued"] == 2
    assert before["held"] >= 8
    assert admitted == queued  # on the broker: the admitted jobs, and no held one
    assert after == before  # held jobs live in the ledger alone: the restart lost none of them
    assert [row["state"] for row in rows] == ["succeeded"] * 20
    assert max(watch.admitted, watch.active, depth, bodies) <= 2


def test_23_postgresql_stopped_for_10_seconds_while_limited_jobs_run_and_wait(cap, faults: Platform) -> None:
    cap(2)
    ids = submit(faults, "s23", 12, 1.0)
    with Watch(faults) as watch:
        wait_running(faults, ids, 2)
        faults.postgres.stop()  # fast shutdown: every session is cut
        stopped = time.monotonic()
        try:
            time.sleep(10)
        finally:
            faults.postgres.start()
        restarted = time.monotonic()
        rows = finish_all(faults, ids, timeout=90)
        recovered = time.monotonic() - restarted
    depth, bodies = ledger_depth(faults, ids), body_depth(faults, "s23", 1.0)
    print(
        f"PostgreSQL down {restarted - stopped:.0f}s: all 12 done {recovered:.1f}s after it returned;"
        f" attempts {sorted(Counter(row['attempt'] for row in rows).items())}; most admitted"
        f" {watch.admitted}, queued or running {watch.active}, attempts open at once {depth}, bodies"
        f" at once {bodies}"
    )
    assert [row["state"] for row in rows] == ["succeeded"] * 12
    assert max(watch.admitted, watch.active, depth, bodies) <= 2


def test_24_admitters_racing_with_the_leader_and_the_finishes(cap, faults: Platform) -> None:
    """Three more admitters (each its own connection, as a second leader would be) run the
    leader's admission in a loop while the leader and every finish admit too."""
    cap(3)
    faults.start_worker("worker-24", "-c", "2")  # 4 pool processes for a cap of 3
    stop = threading.Event()
    errors: list[str] = []
    rounds = Counter[str]()

    def admitter(name: str) -> None:
        while not stop.is_set():
            try:
                with faults.ledger() as conn:
                    ledger.hold_due(conn)
                with faults.ledger() as conn:
                    admitted = ledger.admit(conn)
                publisher.publish_committed(faults.settings, faults.registry, admitted)
                rounds[name] += 1
            except Exception as error:
                errors.append(f"{name}: {type(error).__name__}: {error}")
            time.sleep(0.01)

    ids = submit(faults, "s24", 40, 0.3)
    threads = [threading.Thread(target=admitter, args=(f"admitter-{n}",), daemon=True) for n in range(3)]
    started = time.monotonic()
    with Watch(faults) as watch:
        for thread in threads:
            thread.start()
        try:
            rows = finish_all(faults, ids, timeout=90)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
    took = time.monotonic() - started
    depth, bodies = ledger_depth(faults, ids), body_depth(faults, "s24", 0.3)
    print(
        f"3 admitters racing the leader and the finishes over a cap of 3: 40 jobs in {took:.1f}s"
        f" (cap arithmetic 14 x 0.3 s), {sum(rounds.values())} admission rounds; most admitted"
        f" {watch.admitted}, queued or running {watch.active}, attempts open at once {depth},"
        f" bodies at once {bodies}"
    )
    assert not errors, errors[:5]
    assert [row["state"] for row in rows] == ["succeeded"] * 40
    assert max(watch.admitted, watch.active, depth, bodies) <= 3
    assert watch.admitted == 3  # the cap was reached
