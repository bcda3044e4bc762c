"""The job lifecycle, and the compare-and-set statements that enforce it.

Every job lives in exactly one of these states; the three on the right are
terminal and never left::

                 ┌──────────────────────── cancel ─────────────────────────┐
                 │                                                          ▼
  submit ─► scheduled ──stage──► queued ──claim──► running ──succeed──► succeeded
  (delayed)                        ▲     (a worker)  │  ▲ │
                                   │                 │  │ ├──fail────────► failed
                                 stage      retry/rescue│ │  (no attempts left,
                                   │                 ▼  │ │   not retryable)
                                   └──────────── retrying │
                                                        claim (lease expired)
                                                          └──cancel──────► cancelled

The transitions, one per line (``from --event--> to``); the unit tests check
``TRANSITIONS`` against this list and against ``docs/architecture.md``::

    scheduled --stage--> queued        the leader publishes a delayed job when due
    retrying --stage--> queued         the leader publishes a retry when its backoff ends
    queued --claim--> running          a worker takes the job: attempt + 1, lease taken
    running --claim--> running         a redelivery takes a job whose lease expired
    running --succeed--> succeeded     the body returned; result stored
    running --retry--> retrying        the body raised a retryable error, attempts left
    running --fail--> failed           not retryable, or the last attempt failed
    running --rescue--> retrying       the lease expired (worker lost), attempts left
    running --rescue--> failed         the lease expired on the last attempt
    scheduled --cancel--> cancelled    an operator cancelled it
    queued --cancel--> cancelled       an operator cancelled it
    retrying --cancel--> cancelled     an operator cancelled it
    running --cancel--> cancelled      an operator cancelled it; the worker stops it

Replaying a ``failed`` or ``cancelled`` job (``jobs retry``) never leaves the
terminal state: it submits a new job whose ``retry_of`` names the old one.

Each function below is one statement: an UPDATE whose WHERE clause names the
states the event may start from, so two actors racing for the same job cannot
both win. The attempt history (``job_attempts``) is written in the same
statement through a data-modifying CTE, so every transition is one round trip.
"""

from __future__ import annotations

import functools
import json
import operator
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, cast

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs import roster
from jobs.counters import ATTEMPTS, FINISHED, Tally
from jobs.schema import TERMINAL_STATES, job_attempts, jobs, queue_pauses

__all__ = [
    "ACTIVE_STATES",
    "SERVER_NOW",
    "TRANSITIONS",
    "Claimed",
    "Executor",
    "Finished",
    "KeyHolder",
    "Published",
    "adopt",
    "cancel",
    "claim",
    "copy_rows",
    "fail",
    "hand_back",
    "holder_of_key",
    "id_for_slot",
    "insert_rows",
    "mark_unpublished",
    "progress",
    "prune",
    "record_refused",
    "republish_stale",
    "rescue_expired",
    "retry",
    "sources",
    "stage_due",
    "state_of",
    "states_of",
    "succeed",
    "take_unpublished",
]

TRANSITIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("scheduled", "stage", "queued"),
        ("retrying", "stage", "queued"),
        ("queued", "claim", "running"),
        ("running", "claim", "running"),
        ("running", "succeed", "succeeded"),
        ("running", "retry", "retrying"),
        ("running", "fail", "failed"),
        ("running", "rescue", "retrying"),
        ("running", "rescue", "failed"),
        ("scheduled", "cancel", "cancelled"),
        ("queued", "cancel", "cancelled"),
        ("retrying", "cancel", "cancelled"),
        ("running", "cancel", "cancelled"),
    }
)

ACTIVE_STATES = ("scheduled", "queued", "running", "retrying")


def sources(event: str) -> tuple[str, ...]:
    """The states an event may start from, per ``TRANSITIONS``."""
    found = sorted({source for source, name, _ in TRANSITIONS if name == event})
    if not found:
        raise KeyError(event)
    return tuple(found)


def _targets(event: str) -> set[str]:
    return {target for _, name, target in TRANSITIONS if name == event}


assert not {t for _, _, t in TRANSITIONS} - set(ACTIVE_STATES) - set(TERMINAL_STATES)

_now = sa.func.now


def _seconds(value: float) -> sa.BindParameter[timedelta]:
    return sa.bindparam(None, timedelta(seconds=value), type_=sa.Interval)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job a worker has just claimed."""

    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    queue: str = ""
    waited: float = 0.0
    """Seconds from when the job could run (created, or due after a delay, a retry or a lost
    lease) to this claim."""
    lost: bool = False
    """This claim took over a job whose previous attempt lost its lease (now recorded ``lost``)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """What a finishing transition recorded: the job's kind and queue, its next run time
    (``retrying`` only) and the attempt's run time in seconds, from claim to this transition."""

    kind: str
    queue: str
    not_before: datetime | None
    ran: float | None


@dataclass(frozen=True, slots=True)
class Published:
    """What the publisher needs to put a job on the broker."""

    id: uuid.UUID
    kind: str
    queue: str
    priority: int
    payload: dict[str, Any]
    payload_json: str | None = None  # the payload serialized once, when the producer has it

    def json(self) -> str:
        return self.payload_json if self.payload_json is not None else json.dumps(self.payload)


_PUBLISH_COLUMNS = (jobs.c.id, jobs.c.kind, jobs.c.queue, jobs.c.priority, jobs.c.payload)


def _param(name: str, type_: Any) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def _json_param(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=pg.JSONB(none_as_null=True))


@functools.cache
def _claim_statement() -> sa.Select[Any]:
    """Built once: the hot paths reuse one statement object (compiled once, cached key)."""
    claimed = (
        sa.update(jobs)
        .where(
            jobs.c.id == _param("w_job_id", sa.Uuid),
            sa.or_(
                jobs.c.state == "queued",
                sa.and_(
                    jobs.c.state == "running",
                    jobs.c.lease_until < _now(),
                    jobs.c.attempt < jobs.c.max_attempts,
                ),
            ),
        )
        .values(
            state="running",
            attempt=jobs.c.attempt + 1,
            lease_until=_now() + _param("w_lease", sa.Interval),
            started_at=_now(),
            worker=_param("w_worker", sa.Text),
            # A job taken over after its lease expired was due again from then (SET reads the
            # old row): the queue wait below starts there, as it does after a rescue.
            not_before=sa.case((jobs.c.state == "running", jobs.c.lease_until), else_=jobs.c.not_before),
        )
        .returning(
            jobs.c.id,
            jobs.c.kind,
            jobs.c.payload,
            jobs.c.attempt,
            jobs.c.max_attempts,
            jobs.c.queue,
            _seconds_since(sa.func.greatest(jobs.c.created_at, jobs.c.not_before), _now()).label("waited"),
        )
        .cte("claimed")
    )
    lost = (
        sa.update(job_attempts)
        .where(
            job_attempts.c.job_id == claimed.c.id,
            job_attempts.c.attempt == claimed.c.attempt - 1,
            job_attempts.c.outcome.is_(None),
        )
        .values(outcome="lost", finished_at=_now(), error=_LOST_ERROR)
        .returning(job_attempts.c.job_id)
        .cte("lost")
    )
    attempt = (
        sa.insert(job_attempts)
        .from_select(
            ["job_id", "attempt", "worker"],
            sa.select(claimed.c.id, claimed.c.attempt, _param("w_worker", sa.Text)),
        )
        .cte("attempt")
    )
    lost_count = sa.select(sa.func.count()).select_from(lost).scalar_subquery().label("lost")
    return sa.select(claimed, lost_count).add_cte(attempt)


def _seconds_since(start: Any, end: Any) -> sa.ColumnElement[float]:
    return sa.cast(sa.func.extract("epoch", end - start), sa.Float)


#: Where a transition runs: a SQLAlchemy connection, or for the worker's hot path a psycopg
#: connection of its own (``jobs.db.direct``) on which the statement is prepared once.
Executor = sa.Connection | psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A statement compiled once to SQL text, with its constant parameters bound."""

    sql: str
    constants: dict[str, Any]
    json_names: frozenset[str]

    def params(self, values: dict[str, Any]) -> dict[str, Any]:
        merged = dict(self.constants)
        for name, value in values.items():
            merged[name] = Jsonb(value) if name in self.json_names and value is not None else value
        return merged


@functools.cache
def _prepared(statement: sa.Select[Any]) -> _Prepared:
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    dialect = PGDialect_psycopg()  # type: ignore[no-untyped-call]  # SQLAlchemy: __init__ unannotated
    compiled = statement.compile(dialect=dialect)
    json_names = frozenset(
        name for name, bind in compiled.binds.items() if isinstance(bind.type, sa.JSON | pg.JSONB)
    )
    constants = {
        name: Jsonb(value) if name in json_names and value is not None else value
        for name, value in compiled.construct_params(_check=False).items()
        if not name.startswith("w_")
    }
    return _Prepared(str(compiled), constants, json_names)


def _execute(conn: Executor, statement: sa.Select[Any], params: dict[str, Any]) -> Any:
    """Run a hot statement; returns its first row (attribute access by column name) or ``None``."""
    if isinstance(conn, sa.Connection):
        return conn.execute(statement, params).first()
    prepared = _prepared(statement)
    return conn.execute(prepared.sql, prepared.params(params), prepare=True).fetchone()


def claim(conn: Executor, job_id: uuid.UUID, *, worker: str, lease: float) -> Claimed | None:
    """Take a queued job (or a running one whose lease expired) for one attempt.

    ``None`` means another delivery holds it, it is finished or cancelled, or it
    is not due: the caller acknowledges the message and does nothing.
    """
    params = {"w_job_id": job_id, "w_worker": worker, "w_lease": timedelta(seconds=lease)}
    row = _execute(conn, _claim_statement(), params)
    if row is None:
        return None
    return Claimed(
        row.id,
        row.kind,
        row.payload,
        row.attempt,
        row.max_attempts,
        row.queue,
        waited=max(row.waited or 0.0, 0.0),
        lost=bool(row.lost),
    )


_LOST_ERROR = {"type": "WorkerLost", "message": "worker lost: its lease expired before it finished"}


@functools.cache
def _finish_statement(event: str) -> sa.Select[Any]:
    """One statement per finishing event, built once; its parameters are named ``w_*``."""
    (state,) = _targets(event)
    values: dict[str, Any] = {"state": state, "lease_until": None}
    if event == "succeed":
        values.update(result=_json_param("w_result"), finished_at=_now(), error=None)
    elif event == "retry":
        values.update(error=_json_param("w_error"), not_before=_now() + _param("w_delay", sa.Interval))
    else:
        values.update(error=_json_param("w_error"), finished_at=_now())
    finished = (
        sa.update(jobs)
        .where(
            jobs.c.id == _param("w_job_id", sa.Uuid),
            jobs.c.attempt == _param("w_attempt", sa.Integer),
            # "IS TRUE" keeps the planner on the primary key: with stale statistics it would walk
            # ix_jobs_state_created_at through every dead 'running' entry (found by make bench).
            sa.or_(*(jobs.c.state == source for source in sources(event))).self_group().is_(sa.true()),
        )
        .values(**values)
        .returning(
            jobs.c.id,
            jobs.c.attempt,
            jobs.c.kind,
            jobs.c.queue,
            jobs.c.not_before,
            # clock_timestamp(): a success recorded in the body's own transaction has now() = its start.
            _seconds_since(jobs.c.started_at, sa.func.clock_timestamp()).label("ran"),
        )
        .cte("finished")
    )
    history = (
        sa.update(job_attempts)
        .where(job_attempts.c.job_id == finished.c.id, job_attempts.c.attempt == finished.c.attempt)
        .values(
            outcome="succeeded" if event == "succeed" else "error",
            finished_at=_now(),
            error=None if event == "succeed" else _json_param("w_error"),
        )
        .cte("history")
    )
    return sa.select(
        finished.c.id, finished.c.kind, finished.c.queue, finished.c.not_before, finished.c.ran
    ).add_cte(history)


def _finish(conn: Executor, event: str, params: dict[str, Any]) -> Finished | None:
    row = _execute(conn, _finish_statement(event), params)
    if row is None:
        return None
    return Finished(row.kind, row.queue, row.not_before if event == "retry" else None, row.ran)


def succeed(conn: Executor, job_id: uuid.UUID, attempt: int, result: Any) -> Finished | None:
    """Record success of this attempt; ``None`` if the job is no longer ours."""
    return _finish(conn, "succeed", {"w_job_id": job_id, "w_attempt": attempt, "w_result": result})


def retry(
    conn: Executor, job_id: uuid.UUID, attempt: int, error: dict[str, Any], delay: float
) -> Finished | None:
    """Record a failed attempt that will be retried after ``delay`` seconds; the result's
    ``not_before`` is when the leader publishes it again. ``None`` if the job is no longer ours."""
    params = {"w_job_id": job_id, "w_attempt": attempt, "w_error": error, "w_delay": timedelta(seconds=delay)}
    return _finish(conn, "retry", params)


def fail(conn: Executor, job_id: uuid.UUID, attempt: int, error: dict[str, Any]) -> Finished | None:
    """Record the final failure of a job; ``None`` if the job is no longer ours."""
    return _finish(conn, "fail", {"w_job_id": job_id, "w_attempt": attempt, "w_error": error})


def rescue_expired(
    conn: sa.Connection, *, limit: int = 500, only: uuid.UUID | None = None, tally: Tally | None = None
) -> list[tuple[uuid.UUID, str]]:
    """Move running jobs whose lease expired to ``retrying`` (or ``failed`` when out of attempts).

    ``tally``: counts each lost attempt, and each job that failed, into it.
    """
    assert _targets("rescue") == {"retrying", "failed"}
    due = sa.select(jobs.c.id).where(jobs.c.state == "running", jobs.c.lease_until < _now())
    if only is not None:
        due = due.where(jobs.c.id == only)
    due = due.order_by(jobs.c.lease_until).limit(limit).with_for_update(skip_locked=True)
    exhausted = jobs.c.attempt >= jobs.c.max_attempts
    rescued = (
        sa.update(jobs)
        .where(jobs.c.id.in_(due.scalar_subquery()), jobs.c.state == "running")
        .values(
            state=sa.case((exhausted, "failed"), else_="retrying"),
            finished_at=sa.case((exhausted, _now()), else_=None),
            not_before=_now(),
            lease_until=None,
            error=_LOST_ERROR,
        )
        .returning(jobs.c.id, jobs.c.attempt, jobs.c.state, jobs.c.kind, jobs.c.queue)
        .cte("rescued")
    )
    history = (
        sa.update(job_attempts)
        .where(
            job_attempts.c.job_id == rescued.c.id,
            job_attempts.c.attempt == rescued.c.attempt,
            job_attempts.c.outcome.is_(None),
        )
        .values(outcome="lost", finished_at=_now(), error=_LOST_ERROR)
        .cte("history")
    )
    rows = conn.execute(
        sa.select(rescued.c.id, rescued.c.state, rescued.c.kind, rescued.c.queue).add_cte(history)
    ).all()
    if tally is not None:
        for row in rows:
            tally.attempt_ended(
                row.kind, row.queue, "lost", state="failed" if row.state == "failed" else None
            )
    return [(row.id, row.state) for row in rows]


def cancel(conn: sa.Connection, job_id: uuid.UUID, *, tally: Tally | None = None) -> str | None:
    """Cancel a job that is not finished; returns the state it was in, or ``None``.

    ``tally``: counts the cancelled job (and its attempt, if it was running) into it.
    """
    previous = (
        sa.select(jobs.c.id, jobs.c.state, jobs.c.attempt, jobs.c.kind, jobs.c.queue)
        .where(jobs.c.id == job_id, jobs.c.state.in_(sources("cancel")))
        .with_for_update()
        .cte("previous")
    )
    cancelled = (
        sa.update(jobs)
        .where(jobs.c.id == previous.c.id)
        .values(state="cancelled", finished_at=_now(), lease_until=None)
        .returning(jobs.c.id)
        .cte("cancelled")
    )
    history = (
        sa.update(job_attempts)
        .where(
            job_attempts.c.job_id == previous.c.id,
            job_attempts.c.attempt == previous.c.attempt,
            previous.c.state == "running",
            job_attempts.c.outcome.is_(None),
        )
        .values(outcome="cancelled", finished_at=_now())
        .cte("history")
    )
    row = conn.execute(
        sa.select(previous.c.state, previous.c.kind, previous.c.queue)
        .join(cancelled, cancelled.c.id == previous.c.id)
        .add_cte(history)
    ).first()
    if row is None:
        return None
    if tally is not None:
        tally.count(FINISHED, row.kind, row.queue, "cancelled")
        if row.state == "running":
            tally.count(ATTEMPTS, row.kind, row.queue, "cancelled")
    return str(row.state)


def _take_for_publish(conn: sa.Connection, due: sa.Select[Any], values: dict[str, Any]) -> list[Published]:
    """Mark the selected jobs published (and apply ``values``) in one statement; returns them.

    ``published_at`` is set before the message is sent: if sending fails the
    caller clears it again (``mark_unpublished``), and if the caller dies in
    between, ``republish_stale`` sends the job again later. Either way the job
    is never left without a message, and duplicates are absorbed by the claim.
    """
    rows = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id.in_(due.with_for_update(skip_locked=True).scalar_subquery()))
        .values(published_at=_now(), **values)
        .returning(*_PUBLISH_COLUMNS)
    ).all()
    return [Published(*row) for row in rows]


def stage_due(conn: sa.Connection, *, limit: int = 1000) -> list[Published]:
    """Move due ``scheduled`` and ``retrying`` jobs to ``queued``, to be published."""
    due = (
        sa.select(jobs.c.id)
        .where(jobs.c.state.in_(sources("stage")), jobs.c.not_before <= _now())
        .order_by(jobs.c.not_before)
        .limit(limit)
    )
    return _take_for_publish(conn, due, {"state": "queued"})


def take_unpublished(
    conn: sa.Connection, *, older_than: float, alive_within: float, limit: int = 1000
) -> list[Published]:
    """Queued jobs whose message is not on the broker, to be published now.

    Two kinds: jobs committed more than ``older_than`` seconds ago whose message never
    went out (Redis was down, or the producer died), and jobs a worker handed back
    because it does not implement their kind, once a live worker (heartbeat within
    ``alive_within`` seconds) that consumes their queue implements it. A handed-back
    job whose kind no live worker implements stays in the ledger: publishing it would
    only bounce it between workers that cannot run it.
    """
    never_sent = sa.and_(jobs.c.handed_back_at.is_(None), jobs.c.created_at < _now() - _seconds(older_than))
    handed_back = sa.and_(
        jobs.c.handed_back_at.is_not(None),
        roster.live_implementer(jobs.c.kind, jobs.c.queue, alive_within),
    )
    due = (
        sa.select(jobs.c.id)
        .where(jobs.c.state == "queued", jobs.c.published_at.is_(None), sa.or_(never_sent, handed_back))
        .order_by(jobs.c.created_at)
        .limit(limit)
    )
    return _take_for_publish(conn, due, {})


def republish_stale(
    conn: sa.Connection, *, older_than: float, limit: int = 1000, paused_too: bool = False
) -> list[Published]:
    """Queued jobs published more than ``older_than`` seconds ago and still not taken by a worker.

    Their message may be lost (a producer died between its commit and its
    publish, or Redis lost data): they are published again, at most once per
    ``older_than``. A duplicate of a message still in the queue is absorbed by
    the claim. Jobs of a paused queue are left alone: they are waiting on
    purpose, and their messages are in Redis (``paused_too`` takes them as
    well, for the re-drive after Redis lost its data).
    """
    due = sa.select(jobs.c.id).where(
        jobs.c.state == "queued", jobs.c.published_at < _now() - _seconds(older_than)
    )
    if not paused_too:
        due = due.where(jobs.c.queue.not_in(sa.select(queue_pauses.c.queue)))
    due = due.order_by(jobs.c.published_at).limit(limit)
    return _take_for_publish(conn, due, {})


def hand_back(conn: sa.Connection, job_id: uuid.UUID) -> bool:
    """A worker got this queued job's message but does not implement its kind: no attempt is
    spent; the message is gone, and the relay publishes the job again once a live worker that
    implements the kind consumes its queue. ``False`` if the job is not queued (a stale copy)."""
    handed = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == "queued")
        .values(published_at=None, handed_back_at=_now())
        .returning(jobs.c.id)
    ).first()
    return handed is not None


def adopt(conn: sa.Connection, row: dict[str, Any], *, handed_back: bool = False) -> bool:
    """Record a foreign message (a plain Celery ``send_task``) as a queued job; ``False`` if a job
    with its id exists already (the message was a copy).

    ``handed_back``: the worker that got it lacks the kind; the relay publishes the job again once
    a live worker implements it (its payload is checked by the worker that runs it).
    """
    values = {key: value for key, value in row.items() if key in jobs.c}
    values.update(state="queued", published_at=None if handed_back else _now())
    if handed_back:
        values["handed_back_at"] = _now()
    inserted = conn.execute(
        pg_insert(jobs).values(values).on_conflict_do_nothing(index_elements=[jobs.c.id]).returning(jobs.c.id)
    ).first()
    return inserted is not None


def record_refused(conn: sa.Connection, row: dict[str, Any], error: dict[str, Any]) -> bool:
    """A message from outside that cannot run is recorded as ``failed`` with the reason, attempt 0;
    ``False`` if a row with its id exists already (the message was a copy)."""
    values = {key: value for key, value in row.items() if key in jobs.c}
    values.update(state="failed", error=error, finished_at=_now())
    inserted = conn.execute(
        pg_insert(jobs).values(values).on_conflict_do_nothing(index_elements=[jobs.c.id]).returning(jobs.c.id)
    ).first()
    return inserted is not None


def state_of(conn: sa.Connection, job_id: uuid.UUID) -> str | None:
    """The job's state, or ``None`` when the ledger has no such job."""
    return conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()


def states_of(conn: sa.Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The states of the jobs among ``ids`` that the ledger has."""
    if not ids:
        return {}
    return {row.id: row.state for row in conn.execute(sa.select(jobs.c.id, jobs.c.state).where(_any_id(ids)))}


def mark_unpublished(conn: sa.Connection, ids: Iterable[uuid.UUID]) -> None:
    """The broker did not take these jobs' messages: the relay publishes them when it returns."""
    id_list = list(ids)
    if id_list:
        conn.execute(
            sa.update(jobs).where(_any_id(id_list), jobs.c.state == "queued").values(published_at=None)
        )


def _any_id(ids: Iterable[uuid.UUID]) -> sa.ColumnElement[bool]:
    """``id = ANY(:ids)``: one array parameter, however many ids."""
    return jobs.c.id == sa.any_(sa.bindparam(None, list(ids), type_=pg.ARRAY(sa.Uuid)))


def progress(conn: sa.Connection, job_id: uuid.UUID, attempt: int, report: dict[str, Any]) -> bool:
    """Store a running job's latest progress report."""
    result = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.state == "running")
        .values(progress=report)
    )
    return result.rowcount == 1


def prune(conn: sa.Connection, *, states: Sequence[str], older_than: float, limit: int = 1000) -> int:
    """Delete up to ``limit`` jobs in ``states`` finished more than ``older_than`` seconds ago."""
    assert set(states) <= set(TERMINAL_STATES), "only finished jobs are ever pruned"
    cutoff = _now() - _seconds(older_than)
    old = (
        sa.select(jobs.c.id)
        .where(jobs.c.state.in_(list(states)), jobs.c.created_at < cutoff, jobs.c.finished_at < cutoff)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return conn.execute(sa.delete(jobs).where(jobs.c.id.in_(old.scalar_subquery()))).rowcount


class _ServerNow:
    def __repr__(self) -> str:
        return "ledger.SERVER_NOW"


#: A new job's ``published_at`` when it is published as it is created: PostgreSQL stamps it with
#: the transaction's ``now()``, the clock ``created_at`` takes too, never the producer's clock.
SERVER_NOW: Final = _ServerNow()


def insert_rows(
    conn: sa.Connection, rows: Sequence[dict[str, Any]], *, idempotent: bool, scheduled: bool = False
) -> list[uuid.UUID]:
    """Insert new jobs; with ``idempotent`` an existing key wins and its row is skipped.

    With ``scheduled`` the rows are schedule firings: an existing job for the
    same (schedule, slot) wins, so no slot is ever fired twice. A row whose
    ``published_at`` is ``SERVER_NOW`` gets the statement's ``now()``.
    """
    # One constant statement executed with many parameter sets: compiled once and cached,
    # sent as multi-row INSERTs ("insertmanyvalues"), ids returned in the rows' order.
    stmt = pg_insert(jobs)
    if idempotent and scheduled:
        stmt = stmt.on_conflict_do_nothing()
    elif idempotent:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=[jobs.c.idempotency_key], index_where=sa.text("idempotency_key IS NOT NULL")
        )
    elif scheduled:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=[jobs.c.schedule_name, jobs.c.schedule_slot],
            index_where=sa.text("schedule_name IS NOT NULL"),
        )
    params = [{key: value for key, value in row.items() if key in jobs.c} for row in rows]
    if any(row.get("published_at") is SERVER_NOW for row in rows):
        # now() is evaluated by PostgreSQL in the INSERT itself: the same instant as created_at's
        # default, in one round trip (a SELECT now() first would be a second one).
        stmt = stmt.values(published_at=sa.case((_param("w_stamp", sa.Boolean), _now()), else_=_PUBLISHED_AT))
        for values in params:
            published_at = values.pop("published_at", None)
            values["w_stamp"] = published_at is SERVER_NOW
            values["w_published_at"] = None if published_at is SERVER_NOW else published_at
    return list(conn.execute(stmt.returning(jobs.c.id, sort_by_parameter_order=True), params).scalars())


_PUBLISHED_AT = _param("w_published_at", sa.DateTime(timezone=True))

#: Columns a new job is created with (the rest take their defaults).
NEW_JOB_COLUMNS = (
    "id", "kind", "queue", "priority", "payload", "state", "max_attempts", "not_before",
    "idempotency_key", "submitted_by", "retry_of", "published_at",
)  # fmt: skip


def copy_rows(conn: sa.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Insert many new jobs with COPY: the bulk path (no conflicts possible: fresh ids, no keys).

    Call it in a transaction: a row whose ``published_at`` is ``SERVER_NOW``
    gets the transaction's ``now()``, which is also every row's ``created_at``.
    The statement names only constant column names, so it is spelled out here; SQLAlchemy
    has no COPY construct.
    """
    # COPY evaluates no expression, so the transaction's timestamp is read once, before it starts.
    now = conn.execute(sa.select(_now())).scalar_one()
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    columns = ", ".join(NEW_JOB_COLUMNS)
    with raw.cursor() as cursor, cursor.copy(f"COPY jobs ({columns}) FROM STDIN") as copy:
        copy.set_types(_COPY_TYPES)
        for row in rows:
            if row.get("published_at") is SERVER_NOW:
                row["published_at"] = now
            copy.write_row(_copy_values(row))


# COPY's text format takes the JSON text as it is: the payload is serialized only once.
_COPY_TYPES = [
    "uuid", "text", "text", "int2", "text", "text", "int4", "timestamptz",
    "text", "text", "uuid", "timestamptz",
]  # fmt: skip
_copy_values_json = operator.itemgetter(*("payload_json" if c == "payload" else c for c in NEW_JOB_COLUMNS))


def _copy_values(row: dict[str, Any]) -> tuple[Any, ...]:
    try:  # the producer's rows hold every column and the payload's JSON text
        return cast(tuple[Any, ...], _copy_values_json(row))
    except KeyError:
        pass
    values = [row.get(c) for c in NEW_JOB_COLUMNS]
    values[NEW_JOB_COLUMNS.index("payload")] = row.get("payload_json") or json.dumps(row["payload"])
    return tuple(values)


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """The job holding an idempotency key, as compared with a new submission."""

    id: uuid.UUID
    kind: str
    same_payload: bool  # the stored payload equals the new one, as JSONB compares (key order aside)


def holder_of_key(conn: sa.Connection, key: str, payload_json: str) -> KeyHolder | None:
    """The job that holds an idempotency key, if any, and whether its payload is ``payload_json``."""
    same = jobs.c.payload == sa.cast(sa.bindparam("payload_json", payload_json, type_=sa.Text), pg.JSONB)
    row = conn.execute(
        sa.select(jobs.c.id, jobs.c.kind, same.label("same")).where(jobs.c.idempotency_key == key)
    ).first()
    return None if row is None else KeyHolder(row.id, row.kind, bool(row.same))


def id_for_slot(conn: sa.Connection, schedule: str, slot: datetime) -> uuid.UUID | None:
    """The job that fired a schedule's slot, if any."""
    return conn.execute(
        sa.select(jobs.c.id).where(jobs.c.schedule_name == schedule, jobs.c.schedule_slot == slot)
    ).scalar_one_or_none()
