"""Flow control's exactness under concurrency, against the real ledger (no workers, no leader).

Threads do at once what the platform's processes do: submit limited jobs (one by one and in
batches), claim and finish them (succeed, retry, fail) with the finish's own admission, cancel
held and queued ones, hold due retries, and admit as the leader does. A checker thread reads
the ledger all the while: every snapshot it sees is a committed state, and in none of them may
a key have more admitted, unfinished jobs than its cap. At the end one ``admit`` leaves nothing
held where a slot is free, and a plain drain (finishes only) runs every job to the end.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db, ledger
from jobs.limits import Limit
from jobs.producer import Producer
from jobs.schema import jobs, limit_slots
from jobs.settings import Settings
from tests.support.limits import set_limit

pytestmark = pytest.mark.integration

TENANTS = ("a", "b", "c", "d", "e", "f")
PER_TENANT = 2
ALL = 5
RUN_FOR = 6.0
TENANT = jobs.c.payload["tenant"].astext


@dataclass
class Seen:
    """What the checker saw: the most admitted-unfinished jobs per key, and any breach."""

    samples: int = 0
    most: Counter[str] = field(default_factory=Counter)
    breaches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def count_by(
    conn: sa.Connection, column: sa.ColumnElement[Any], *where: sa.ColumnElement[bool]
) -> Counter[str]:
    rows = conn.execute(sa.select(column, sa.func.count()).where(*where).group_by(column)).all()
    return Counter({str(value): int(n) for value, n in rows})


def usage(conn: sa.Connection) -> tuple[Counter[str], Counter[str]]:
    """Per limit:key, admitted slots of unfinished jobs; per tenant, its jobs queued or running."""
    pair = limit_slots.c.limit_name + ":" + limit_slots.c.key
    admitted = limit_slots.join(jobs, jobs.c.id == limit_slots.c.job_id)
    slots = conn.execute(
        sa.select(pair, sa.func.count())
        .select_from(admitted)
        .where(limit_slots.c.admitted_at.is_not(None), jobs.c.state.in_(("queued", "running")))
        .group_by(pair)
    ).all()
    active = count_by(conn, TENANT, jobs.c.kind == "test.tenant", jobs.c.state.in_(("queued", "running")))
    return Counter({str(key): int(n) for key, n in slots}), active


def breaches(slots: Counter[str], active: Counter[str]) -> list[str]:
    found = [
        f"{pair} has {n} admitted" for pair, n in slots.items() if n > (ALL if pair == "all:" else PER_TENANT)
    ]
    found += [f"tenant {key} has {n} queued or running" for key, n in active.items() if n > PER_TENANT]
    if sum(active.values()) > ALL:
        found.append(f"{sum(active.values())} queued or running in all")
    return found


def loop(
    stop: threading.Event, seen: Seen, name: str, step: Callable[[random.Random], object]
) -> threading.Thread:
    def run() -> None:
        chance = random.Random(name)
        while not stop.is_set():
            try:
                step(chance)
            except Exception as error:
                seen.errors.append(f"{name}: {type(error).__name__}: {error}")
                stop.set()

    return threading.Thread(target=run, name=name, daemon=True)


def pick(conn: sa.Connection, chance: random.Random, states: tuple[str, ...]) -> uuid.UUID | None:
    found = list(conn.execute(sa.select(jobs.c.id).where(jobs.c.state.in_(states)).limit(50)).scalars())
    return chance.choice(found) if found else None


def finish(settings: Settings, chance: random.Random) -> None:
    """A worker's attempt: claim a queued job, then finish it and admit in one transaction."""
    with db.transaction(settings) as conn:
        job_id = pick(conn, chance, ("queued",))
        claimed = ledger.claim(conn, job_id, worker="w", lease=60) if job_id else None
    if claimed is None:
        time.sleep(0.002)
        return
    time.sleep(chance.random() * 0.01)
    with db.transaction(settings) as conn:
        outcome = chance.random()
        error = {"type": "E", "message": "m"}
        if outcome < 0.7:
            ledger.succeed(conn, claimed.id, claimed.attempt, {"ok": True})
        elif outcome < 0.9:
            ledger.retry(conn, claimed.id, claimed.attempt, error, 0.0)  # type: ignore[arg-type]
        else:
            ledger.fail(conn, claimed.id, claimed.attempt, error)  # type: ignore[arg-type]
        ledger.release(conn, [claimed.id])


def cancel(settings: Settings, chance: random.Random) -> None:
    """An operator's cancel of a held or queued job, admitting the next with it (jobs.control)."""
    with db.transaction(settings) as conn:
        found = list(
            conn.execute(
                sa.select(jobs.c.id).where(jobs.c.state.in_(("held", "queued"))).limit(200)
            ).scalars()
        )
        chosen = chance.sample(found, min(len(found), 2))
        done = [job_id for job_id in chosen if ledger.cancel(conn, job_id) is not None]
        ledger.release(conn, done)
    time.sleep(0.1)


def test_concurrent_submits_finishes_cancels_and_admitters_never_exceed_a_cap(producer: Producer):
    settings = producer.settings
    set_limit(settings, Limit("per-tenant", concurrency=PER_TENANT, key="tenant", kind="test.tenant"))
    set_limit(settings, Limit("all", concurrency=ALL, kind="test.tenant"))
    stop = threading.Event()
    seen = Seen()
    counter = iter(range(10**9))

    def submit(chance: random.Random) -> None:
        if chance.random() < 0.5:
            producer.submit("test.tenant", {"tenant": chance.choice(TENANTS), "n": next(counter)})
        else:
            batch = [
                {"tenant": chance.choice(TENANTS), "n": next(counter)} for _ in range(chance.randint(2, 8))
            ]
            producer.submit_many("test.tenant", batch)
        time.sleep(0.01)

    def admit(chance: random.Random) -> None:
        with db.transaction(settings) as conn:
            ledger.admit(conn)
        time.sleep(chance.random() * 0.02)

    def hold_due(chance: random.Random) -> None:
        with db.transaction(settings) as conn:
            ledger.hold_due(conn)
        time.sleep(0.02)

    def check(chance: random.Random) -> None:
        with db.transaction(settings) as conn:
            slots, active = usage(conn)
        seen.samples += 1
        seen.most |= slots
        seen.breaches += breaches(slots, active)

    threads = [
        *(loop(stop, seen, f"submitter-{n}", submit) for n in range(2)),
        *(loop(stop, seen, f"finisher-{n}", lambda chance: finish(settings, chance)) for n in range(4)),
        loop(stop, seen, "canceller", lambda chance: cancel(settings, chance)),
        *(loop(stop, seen, f"admitter-{n}", admit) for n in range(2)),
        loop(stop, seen, "hold-due", hold_due),
        loop(stop, seen, "checker", check),
    ]
    for thread in threads:
        thread.start()
    stop.wait(RUN_FOR)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    with db.transaction(settings) as conn:
        totals = count_by(conn, jobs.c.state)
    print(f"{seen.samples} samples; most admitted per key: {dict(seen.most)}; jobs by state: {dict(totals)}")
    assert not seen.errors, "\n".join(seen.errors)
    assert not seen.breaches, seen.breaches[:10]
    assert seen.samples > 50
    assert totals["succeeded"] + totals["failed"] > 20, totals  # finishes raced, each admitting
    assert seen.most["all:"] == ALL  # the cap was reached, and never passed

    # Every slot the caps allow is taken after one admission pass: nothing waits on free room.
    with db.transaction(settings) as conn:
        ledger.hold_due(conn)
        ledger.admit(conn)
    with db.transaction(settings) as conn:
        slots, active = usage(conn)
        held = count_by(conn, TENANT, jobs.c.state == "held")
    assert not breaches(slots, active)
    if held:
        assert sum(active.values()) == ALL or all(active[key] == PER_TENANT for key in held), (held, active)

    # A drain by finishes alone (each admitting the next) takes every job to a terminal state.
    drained = 0
    chance = random.Random(0)
    while True:
        with db.transaction(settings) as conn:
            ledger.hold_due(conn)
            left = conn.execute(
                sa.select(sa.func.count()).where(jobs.c.state.in_(ledger.ACTIVE_STATES))
            ).scalar_one()
            queued = pick(conn, chance, ("queued",))
        if not left:
            break
        assert queued is not None, f"{left} job(s) unfinished and none queued: a finish failed to admit"
        with db.transaction(settings) as conn:
            claimed = ledger.claim(conn, queued, worker="w", lease=60)
            assert claimed is not None
            ledger.succeed(conn, claimed.id, claimed.attempt, {"ok": True})
            ledger.release(conn, [claimed.id])
        drained += 1
    with db.transaction(settings) as conn:
        left_slots = conn.execute(sa.select(sa.func.count()).select_from(limit_slots)).scalar_one()
    print(f"drained {drained} job(s) by finishes alone")
    assert left_slots == 0  # a finished job keeps no slot


def test_an_admission_passes_over_a_held_job_a_cancel_has_locked(producer: Producer):
    """A cancel locks its jobs, then waits for their limit's lock to admit the next (jobs.control);
    an admitter holding that lock must not wait for the cancelled job's row: it takes the next one.
    (Before, the admitter waited for the row and PostgreSQL broke the deadlock by failing one.)"""
    settings = producer.settings
    set_limit(settings, Limit("one", concurrency=1, kind="test.tenant"))
    running, locked, other = (producer.submit("test.tenant", {"tenant": "x", "n": n}) for n in range(3))
    with db.transaction(settings) as conn:
        assert ledger.cancel(conn, running) == "queued"
        assert ledger.settle(conn) == 1  # room for one, not yet handed on
    admitted: list[ledger.Published] = []
    with db.engine(settings).connect() as cancelling:
        cancelling.begin()
        assert ledger.cancel(cancelling, locked) == "held"  # the row is locked until this commits

        def admitter() -> None:
            with db.transaction(settings) as conn:
                admitted.extend(ledger.admit(conn))

        thread = threading.Thread(target=admitter, daemon=True)
        thread.start()
        thread.join(timeout=10)
        passed_over = not thread.is_alive()
        if passed_over:
            ledger.release(cancelling, [locked])
            cancelling.commit()
        else:
            cancelling.rollback()
            thread.join(timeout=10)
    assert passed_over, "the admitter waited for a row the cancel had locked"
    assert [item.id for item in admitted] == [other]
    with db.transaction(settings) as conn:
        assert ledger.states_of(conn, [running, locked, other]) == {
            running: "cancelled",
            locked: "cancelled",
            other: "queued",
        }
