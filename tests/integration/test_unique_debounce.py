"""Flow control at submit: a kind's unique window and its debounce, against the real ledger.

The kinds are ``test.unique`` (same tenant within 60 s), ``test.unique_unfinished`` (same
tenant while unfinished) and ``test.debounce`` (same tenant, 30 s quiet period), in
``tests.support.kinds``. Window edges are reached by moving ``created_at`` and
``not_before`` in the database, never by sleeping.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from jobs import control, db, ledger
from jobs.errors import IdempotencyConflict, InvalidJobOptions
from jobs.producer import JobId, Producer
from jobs.schema import jobs
from jobs.settings import Settings
from tests.support.fixtures import queued_messages
from tests.support.kinds import DEBOUNCE_PERIOD, UNIQUE_PERIOD

pytestmark = pytest.mark.integration


def rows(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(jobs).order_by(jobs.c.created_at, jobs.c.id)
    if kind is not None:
        query = query.where(jobs.c.kind == kind)
    with db.transaction(settings) as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def row(settings: Settings, job_id: uuid.UUID) -> dict[str, Any]:
    with db.transaction(settings) as conn:
        return dict(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()._mapping)


def set_columns(settings: Settings, job_id: uuid.UUID, **values: Any) -> None:
    with db.transaction(settings) as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))


def seconds_from_now(seconds: float) -> Any:
    """The server's ``now()`` moved by ``seconds`` (negative: in the past)."""
    return sa.func.now() + sa.text(f"interval '{float(seconds)} seconds'")


def server_now(settings: Settings) -> datetime:
    with db.transaction(settings) as conn:
        found: datetime = conn.execute(sa.select(sa.func.now())).scalar_one()
    return found


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def waiting_on(settings: Settings, lock: str) -> bool:
    """Some session of this database waits on a lock of this type (``advisory``, ``tuple``...)."""
    with db.transaction(settings) as conn:
        found = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND wait_event = :lock"
            ),
            {"lock": lock},
        ).scalar_one()
    return bool(found)


# ---------------------------------------------------------------------------------------------------------
# Unique windows


def test_a_submit_inside_the_window_returns_the_first_job(producer, clean):
    first = producer.submit("test.unique", {"tenant": "a", "note": "first"})
    again = producer.submit("test.unique", {"tenant": "a", "note": "other fields do not count"})
    other = producer.submit("test.unique", {"tenant": "b"})

    assert not first.duplicate
    assert first.reason is None
    assert again == first
    assert again.duplicate
    assert again.reason == "unique"
    assert not again.published
    assert other != first
    assert not other.duplicate
    stored = rows(clean)
    assert [r["id"] for r in stored] == [first, other]
    assert stored[0]["payload"]["note"] == "first"  # the duplicate changed nothing
    assert stored[0]["unique_key"]
    assert stored[0]["unique_key"] != stored[1]["unique_key"]
    assert stored[0]["debounce_key"] is None


def test_the_window_counts_from_the_first_jobs_creation(producer, clean):
    first = producer.submit("test.unique", {"tenant": "a"})
    set_columns(clean, first, created_at=seconds_from_now(-(UNIQUE_PERIOD - 2)))
    assert producer.submit("test.unique", {"tenant": "a"}) == first  # just inside

    set_columns(clean, first, created_at=seconds_from_now(-(UNIQUE_PERIOD + 1)))
    second = producer.submit("test.unique", {"tenant": "a"})  # just outside: a new job
    assert second != first
    assert not second.duplicate
    assert producer.submit("test.unique", {"tenant": "a"}) == second  # which opens a new window
    assert [r["id"] for r in rows(clean)] == [first, second]


def test_the_window_holds_whatever_the_first_jobs_state(producer, clean):
    first = producer.submit("test.unique", {"tenant": "a"})
    for state in ("running", "succeeded", "failed", "cancelled"):
        set_columns(clean, first, state=state)
        again = producer.submit("test.unique", {"tenant": "a"})
        assert again == first, state
        assert again.reason == "unique", state
    assert len(rows(clean)) == 1


def test_without_a_period_the_window_lasts_while_the_job_is_unfinished(producer, clean):
    first = producer.submit("test.unique_unfinished", {"tenant": "a"})
    set_columns(clean, first, created_at=seconds_from_now(-86400))  # age does not matter
    for state in ("queued", "running", "retrying", "scheduled", "held"):
        set_columns(clean, first, state=state)
        assert producer.submit("test.unique_unfinished", {"tenant": "a"}) == first, state

    set_columns(clean, first, state="queued")
    with db.transaction(clean) as conn:
        assert ledger.cancel(conn, first) == "queued"
    second = producer.submit("test.unique_unfinished", {"tenant": "a"})
    assert second != first
    assert not second.duplicate
    assert producer.submit("test.unique_unfinished", {"tenant": "a"}) == second

    set_columns(clean, second, state="succeeded")
    third = producer.submit("test.unique_unfinished", {"tenant": "a"})
    assert third not in (first, second)
    assert not third.duplicate
    assert len(rows(clean)) == 3


def test_the_window_is_independent_of_a_delay(producer, clean, broker):
    delayed = producer.submit("test.unique", {"tenant": "a"}, delay=3600)
    assert row(clean, delayed)["state"] == "scheduled"
    assert producer.submit("test.unique", {"tenant": "a"}) == delayed  # now, but within the window
    assert producer.submit("test.unique", {"tenant": "b"}, delay=600) != delayed


def test_an_idempotency_key_is_honoured_before_the_window(producer, clean):
    first = producer.submit("test.unique", {"tenant": "a"}, idempotency_key="k1")
    again = producer.submit("test.unique", {"tenant": "a"}, idempotency_key="k1")
    assert again == first
    assert again.reason == "idempotency"
    # Same tenant (so inside the window) but another payload under the same key: a conflict.
    with pytest.raises(IdempotencyConflict, match=f"bound to job {first}, whose payload differs"):
        producer.submit("test.unique", {"tenant": "a", "note": "x"}, idempotency_key="k1")
    # Another key, same tenant: the window answers.
    assert producer.submit("test.unique", {"tenant": "a"}, idempotency_key="k2").reason == "unique"
    assert len(rows(clean)) == 1


def test_a_replay_is_never_collapsed_and_carries_the_key(producer, clean):
    first = producer.submit("test.unique", {"tenant": "a"})
    set_columns(clean, first, state="failed")
    replayed = control.replay(producer, first)
    assert replayed != first
    assert not replayed.duplicate
    assert row(clean, replayed)["unique_key"] == row(clean, first)["unique_key"]
    assert producer.submit("test.unique", {"tenant": "a"}) == replayed  # the newest in the window


def test_unique_in_the_callers_transaction_holds_the_lock_until_it_ends(producer, clean):
    """A second submitter of the same content waits for the caller's transaction, then sees its job
    (committed) or makes its own (rolled back)."""
    for commit in (True, False):
        with db.transaction(clean) as conn:
            conn.execute(sa.delete(jobs))
        outcome: dict[str, JobId] = {}

        def submit_too(into: dict[str, JobId] = outcome) -> None:
            into["other"] = producer.submit("test.unique", {"tenant": "a"})

        with Session(db.engine(clean)) as session:
            mine = producer.submit("test.unique", {"tenant": "a"}, session=session)
            other = threading.Thread(target=submit_too)
            other.start()
            wait_until(lambda: waiting_on(clean, "advisory"))
            if commit:
                session.commit()
            else:
                session.rollback()
            other.join(timeout=10)
        if commit:
            assert outcome["other"] == mine
            assert outcome["other"].duplicate
            assert [r["id"] for r in rows(clean)] == [mine]
        else:
            assert outcome["other"] != mine
            assert not outcome["other"].duplicate
            assert [r["id"] for r in rows(clean)] == [outcome["other"]]


def test_submit_many_refuses_kinds_with_a_unique_window_or_a_debounce(producer, clean):
    with pytest.raises(
        InvalidJobOptions, match=r"kind test\.unique has a unique window: submit its jobs one by one"
    ):
        producer.submit_many("test.unique", [{"tenant": "a"}])
    with pytest.raises(
        InvalidJobOptions, match=r"kind test\.debounce has a debounce: submit its jobs one by one"
    ):
        producer.submit_many("test.debounce", [{"tenant": "a"}])
    assert rows(clean) == []


def test_kinds_without_flow_control_keep_the_single_statement_path(producer, clean, monkeypatch):
    """No transaction, no lock: the job is inserted by one autocommit statement, as before (once
    the process knows which kinds are limited: it reads that list at most once a second)."""
    producer.submit("ping", {})
    statements: list[str] = []
    engine = db.engine(clean)

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split(maxsplit=1)[0].upper())

    execute = psycopg.Connection.execute

    def record_driver(conn: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        # The single submit's path (db.pooled) sends its INSERT on psycopg's own connection.
        statements.append(
            f"{str(query).split(maxsplit=1)[0].upper()}{'' if conn.autocommit else ' (in a transaction)'}"
        )
        return execute(conn, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", record_driver)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        producer.submit("ping", {})
        plain = list(statements)
        statements.clear()
        producer.submit("test.unique", {"tenant": "a"})
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert plain == ["INSERT"]
    assert statements == ["SELECT", "SELECT", "INSERT"]  # the lock, the look-up, the insert


# ---------------------------------------------------------------------------------------------------------
# Debounce


def test_debounced_submissions_collapse_into_one_job_with_the_latest_payload(producer, clean, broker):
    first = producer.submit("test.debounce", {"tenant": "a", "note": "1"})
    stored = row(clean, first)
    assert not first.duplicate
    assert stored["state"] == "scheduled"
    assert stored["published_at"] is None
    assert stored["debounce_key"]
    assert stored["unique_key"] is None
    # Due one period after the submission, on the server's clock.
    assert stored["not_before"] - stored["created_at"] == timedelta(seconds=DEBOUNCE_PERIOD)

    set_columns(clean, first, not_before=seconds_from_now(2))  # as if the period had nearly passed
    before = server_now(clean)
    again = producer.submit("test.debounce", {"tenant": "a", "note": "2"})
    assert again == first
    assert again.duplicate
    assert again.reason == "debounce"
    pushed = row(clean, first)
    assert pushed["payload"] == {"tenant": "a", "note": "2"}
    assert pushed["state"] == "scheduled"
    assert pushed["not_before"] >= before + timedelta(seconds=DEBOUNCE_PERIOD)

    other = producer.submit("test.debounce", {"tenant": "b", "note": "3"})
    assert other != first
    assert not other.duplicate
    assert len(rows(clean)) == 2
    assert queued_messages(broker) == 0  # nothing is published before it is due


def test_a_debounced_job_that_was_staged_is_not_touched(producer, clean, maintenance):
    from beat.maintenance import Stager

    first = producer.submit("test.debounce", {"tenant": "a", "note": "1"})
    set_columns(clean, first, not_before=seconds_from_now(-1))
    assert Stager(interval=1).run(maintenance) == 1
    assert row(clean, first)["state"] == "queued"

    second = producer.submit("test.debounce", {"tenant": "a", "note": "2"})
    assert second != first
    assert not second.duplicate
    assert row(clean, first)["payload"] == {"tenant": "a", "note": "1"}
    assert row(clean, second)["state"] == "scheduled"
    assert row(clean, second)["payload"] == {"tenant": "a", "note": "2"}


def test_a_debounce_racing_the_stager_leaves_the_staged_job_alone(producer, clean):
    """The stager holds the job's row when the submit comes: the submit waits, finds it staged,
    and makes a new job."""
    first = producer.submit("test.debounce", {"tenant": "a", "note": "1"})
    outcome: dict[str, JobId] = {}
    with db.transaction(clean) as stager:
        stager.execute(sa.select(jobs.c.id).where(jobs.c.id == first).with_for_update())
        submitter = threading.Thread(
            target=lambda: outcome.update(new=producer.submit("test.debounce", {"tenant": "a", "note": "2"}))
        )
        submitter.start()
        wait_until(lambda: waiting_on(clean, "transactionid") or waiting_on(clean, "tuple"))
        stager.execute(sa.update(jobs).where(jobs.c.id == first).values(state="queued"))
    submitter.join(timeout=10)
    assert outcome["new"] != first
    assert not outcome["new"].duplicate
    assert row(clean, first)["payload"] == {"tenant": "a", "note": "1"}
    assert row(clean, outcome["new"])["state"] == "scheduled"


def test_a_debounced_kind_refuses_a_delay_or_a_time(producer, clean):
    with pytest.raises(
        InvalidJobOptions, match=r"kind test\.debounce debounces: its job runs 30s after the last"
    ):
        producer.submit("test.debounce", {"tenant": "a"}, delay=10)
    with pytest.raises(InvalidJobOptions, match="so it takes no delay or time"):
        producer.submit("test.debounce", {"tenant": "a"}, at=datetime.now().astimezone() + timedelta(hours=1))
    assert rows(clean) == []


def test_debounce_in_the_callers_transaction(producer, clean):
    with Session(db.engine(clean)) as session:
        first = producer.submit("test.debounce", {"tenant": "a", "note": "1"}, session=session)
        again = producer.submit("test.debounce", {"tenant": "a", "note": "2"}, session=session)
        assert again == first
        assert again.reason == "debounce"
        session.commit()
    (stored,) = rows(clean)
    assert stored["id"] == first
    assert stored["payload"]["note"] == "2"


# ---------------------------------------------------------------------------------------------------------
# Concurrent submitters: two processes, the same content at the same moment, many rounds

ROUNDS = 40


def _submitter(kind: str, barrier: Any, results: Any) -> None:
    """One process's side: submit tenant ``r`` of ``kind`` right after the barrier of round ``r``."""
    producer = Producer()
    with db.autocommit(producer.settings) as conn:  # connected before the rounds: the race is the submit
        conn.execute(sa.select(1))
    for number in range(ROUNDS):
        barrier.wait(timeout=30)
        job = producer.submit(kind, {"tenant": f"t{number}", "note": str(uuid.uuid4())})
        results.put((number, str(job), job.duplicate))
    db.dispose()


@pytest.mark.parametrize("kind", ["test.unique", "test.unique_unfinished", "test.debounce"])
def test_two_processes_submitting_the_same_content_at_once_get_one_job(clean, kind):
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no pooled connection shared
    barrier = context.Barrier(2)
    results = context.Queue()
    processes = [context.Process(target=_submitter, args=(kind, barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=60) for _ in range(2 * ROUNDS)]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert [process.exitcode for process in processes] == [0, 0]

    by_round: dict[int, list[tuple[str, bool]]] = {}
    for number, job, duplicate in outcomes:
        by_round.setdefault(number, []).append((job, duplicate))
    stored = rows(clean, kind)
    assert len(stored) == ROUNDS, f"{len(stored) - ROUNDS} duplicate job(s) slipped through"
    for number, pair in sorted(by_round.items()):
        assert pair[0][0] == pair[1][0], f"round {number}: two jobs {pair}"
        assert sorted(duplicate for _, duplicate in pair) == [False, True], f"round {number}: {pair}"
