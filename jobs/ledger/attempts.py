"""The attempt's transitions: what workers (and operators) do to a job once it is queued.

Each function is one statement (``jobs.ledger.lifecycle`` draws them): the
job's row moves by compare-and-set, and the attempt history moves with it in
the same statement (``close_attempt``). ``claim`` and the three finishing
events run on the worker's hot path as prepared statements
(``jobs.ledger.statements``).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobs.counters import ATTEMPTS, FINISHED, Tally
from jobs.errors import ErrorRecord
from jobs.ledger.lifecycle import sources, targets
from jobs.ledger.statements import Executor, close_attempt, execute, json_param, now, param, seconds_since
from jobs.ledger.upkeep import Status
from jobs.schema import job_attempts, jobs
from jobs.states import State

__all__ = [
    "LOST_ERROR",
    "Claimed",
    "Finished",
    "cancel",
    "cancel_where",
    "claim",
    "end_leases_of",
    "fail",
    "hand_back",
    "progress",
    "release_lease",
    "rescue_expired",
    "retry",
    "succeed",
]

#: The error of an attempt whose worker was lost (its lease expired).
LOST_ERROR: ErrorRecord = {
    "type": "WorkerLost",
    "message": "worker lost: its lease expired before it finished",
}


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
    limited: bool = False
    """The job is under a limit: its finish admits the next waiting job (``jobs.ledger.admission``)."""
    workflow: bool = False
    """The job is a workflow's step: its finish releases its children (``jobs.ledger.dependencies``)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """What a finishing transition recorded: the job's kind and queue, its next run time
    (``retrying`` only) and the attempt's run time in seconds, from claim to this transition."""

    kind: str
    queue: str
    not_before: datetime | None
    ran: float | None


def claimed_columns() -> tuple[sa.ColumnElement[Any], ...]:
    """What a claim returns of each job it took (``claimed_from`` reads them); shared with
    ``jobs.ledger.batches``."""
    return (
        jobs.c.id,
        jobs.c.kind,
        jobs.c.payload,
        jobs.c.attempt,
        jobs.c.max_attempts,
        jobs.c.queue,
        seconds_since(sa.func.greatest(jobs.c.created_at, jobs.c.not_before), now()).label("waited"),
        jobs.c.limited,
        jobs.c.workflow_id.is_not(None).label("workflow"),
    )


def claimed_from(row: Any, *, lost: bool = False) -> Claimed:
    """A claim's row (``claimed_columns``) as a ``Claimed``."""
    return Claimed(
        row.id,
        row.kind,
        row.payload,
        row.attempt,
        row.max_attempts,
        row.queue,
        waited=max(row.waited or 0.0, 0.0),
        lost=lost,
        limited=bool(row.limited),
        workflow=bool(row.workflow),
    )


def open_attempts(claimed: Any) -> Any:
    """The attempt history's half of a claim: one open attempt row per job ``claimed`` (a CTE
    returning ``id`` and ``attempt``) took, in the same statement."""
    return (
        sa.insert(job_attempts)
        .from_select(
            ["job_id", "attempt", "worker"],
            sa.select(claimed.c.id, claimed.c.attempt, param("w_worker", sa.Text)),
        )
        .cte("attempt")
    )


@functools.cache
def _claim_statement() -> sa.Select[Any]:
    """Built once: the hot paths reuse one statement object (compiled once, cached key)."""
    claimed = (
        sa.update(jobs)
        .where(
            jobs.c.id == param("w_job_id", sa.Uuid),
            sa.or_(
                jobs.c.state == "queued",
                sa.and_(
                    jobs.c.state == "running",
                    jobs.c.lease_until < now(),
                    jobs.c.attempt < jobs.c.max_attempts,
                ),
            ),
        )
        .values(
            state="running",
            attempt=jobs.c.attempt + 1,
            lease_until=now() + param("w_lease", sa.Interval),
            started_at=now(),
            worker=param("w_worker", sa.Text),
            # A job taken over after its lease expired was due again from then (SET reads the
            # old row): the queue wait below starts there, as it does after a rescue.
            not_before=sa.case((jobs.c.state == "running", jobs.c.lease_until), else_=jobs.c.not_before),
        )
        .returning(*claimed_columns())
        .cte("claimed")
    )
    lost = (
        close_attempt(claimed.c.id, claimed.c.attempt - 1, "lost", error=LOST_ERROR)
        .returning(job_attempts.c.job_id)
        .cte("lost")
    )
    attempt = open_attempts(claimed)
    lost_count = sa.select(sa.func.count()).select_from(lost).scalar_subquery().label("lost")
    return sa.select(claimed, lost_count).add_cte(attempt)


def claim(conn: Executor, job_id: uuid.UUID, *, worker: str, lease: float) -> Claimed | None:
    """Take a queued job (or a running one whose lease expired) for one attempt.

    ``None`` means another delivery holds it, it is finished or cancelled, or it
    is not due: the caller acknowledges the message and does nothing.
    """
    params = {"w_job_id": job_id, "w_worker": worker, "w_lease": timedelta(seconds=lease)}
    row = execute(conn, _claim_statement(), params)
    if row is None:
        return None
    return claimed_from(row, lost=bool(row.lost))


@functools.cache
def _finish_statement(event: str) -> sa.Select[Any]:
    """One statement per finishing event, built once; its parameters are named ``w_*``."""
    (state,) = targets(event)
    # The finish's own moment: a success recorded in the body's transaction (``ctx.session``) has
    # ``now()`` = when that transaction began, early by the body's run time.
    ended = sa.func.statement_timestamp()
    values: dict[str, Any] = {"state": state, "lease_until": None}
    if event == "succeed":
        values.update(result=json_param("w_result"), finished_at=ended, error=None)
    elif event == "retry":
        values.update(error=json_param("w_error"), not_before=ended + param("w_delay", sa.Interval))
    else:
        values.update(error=json_param("w_error"), finished_at=ended)
    finished = (
        sa.update(jobs)
        .where(
            jobs.c.id == param("w_job_id", sa.Uuid),
            jobs.c.attempt == param("w_attempt", sa.Integer),
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
            seconds_since(jobs.c.started_at, sa.func.clock_timestamp()).label("ran"),
        )
        .cte("finished")
    )
    history = close_attempt(
        finished.c.id,
        finished.c.attempt,
        "succeeded" if event == "succeed" else "error",
        error=None if event == "succeed" else json_param("w_error"),
        open_only=False,
        at=ended,
    ).cte("history")
    return sa.select(
        finished.c.id, finished.c.kind, finished.c.queue, finished.c.not_before, finished.c.ran
    ).add_cte(history)


def _finish(conn: Executor, event: str, params: dict[str, Any]) -> Finished | None:
    row = execute(conn, _finish_statement(event), params)
    if row is None:
        return None
    return Finished(row.kind, row.queue, row.not_before if event == "retry" else None, row.ran)


def succeed(conn: Executor, job_id: uuid.UUID, attempt: int, result: Any) -> Finished | None:
    """Record success of this attempt; ``None`` if the job is no longer ours."""
    return _finish(conn, "succeed", {"w_job_id": job_id, "w_attempt": attempt, "w_result": result})


def retry(
    conn: Executor, job_id: uuid.UUID, attempt: int, error: ErrorRecord, delay: float
) -> Finished | None:
    """Record a failed attempt that will be retried after ``delay`` seconds; the result's
    ``not_before`` is when the leader publishes it again. ``None`` if the job is no longer ours."""
    params = {"w_job_id": job_id, "w_attempt": attempt, "w_error": error, "w_delay": timedelta(seconds=delay)}
    return _finish(conn, "retry", params)


def fail(conn: Executor, job_id: uuid.UUID, attempt: int, error: ErrorRecord) -> Finished | None:
    """Record the final failure of a job; ``None`` if the job is no longer ours."""
    return _finish(conn, "fail", {"w_job_id": job_id, "w_attempt": attempt, "w_error": error})


def rescue_expired(
    conn: sa.Connection, *, limit: int = 500, only: uuid.UUID | None = None, tally: Tally | None = None
) -> list[tuple[uuid.UUID, str]]:
    """Move running jobs whose lease expired to ``retrying`` (or ``failed`` when out of attempts).

    ``tally``: counts each lost attempt, and each job that failed, into it.
    """
    assert targets("rescue") == {"retrying", "failed"}
    due = sa.select(jobs.c.id).where(jobs.c.state == "running", jobs.c.lease_until < now())
    if only is not None:
        due = due.where(jobs.c.id == only)
    due = due.order_by(jobs.c.lease_until).limit(limit).with_for_update(skip_locked=True)
    exhausted = jobs.c.attempt >= jobs.c.max_attempts
    rescued = (
        sa.update(jobs)
        .where(jobs.c.id.in_(due.scalar_subquery()), jobs.c.state == "running")
        .values(
            state=sa.case((exhausted, "failed"), else_="retrying"),
            finished_at=sa.case((exhausted, now()), else_=None),
            not_before=now(),
            lease_until=None,
            error=LOST_ERROR,
        )
        .returning(jobs.c.id, jobs.c.attempt, jobs.c.state, jobs.c.kind, jobs.c.queue)
        .cte("rescued")
    )
    history = close_attempt(rescued.c.id, rescued.c.attempt, "lost", error=LOST_ERROR).cte("history")
    rows = conn.execute(
        sa.select(rescued.c.id, rescued.c.state, rescued.c.kind, rescued.c.queue).add_cte(history)
    ).all()
    if tally is not None:
        for row in rows:
            tally.attempt_ended(
                row.kind, row.queue, "lost", state="failed" if row.state == "failed" else None
            )
    return [(row.id, row.state) for row in rows]


def cancel(conn: sa.Connection, job_id: uuid.UUID, *, tally: Tally | None = None) -> State | None:
    """Cancel a job that is not finished; returns the state it was in, or ``None``.

    ``tally``: counts the cancelled job (and its attempt, if it was running) into it.
    """
    found = cancel_where(conn, jobs.c.id == job_id, tally=tally)
    return found[0][1] if found else None


def cancel_where(
    conn: sa.Connection, which: sa.ColumnElement[bool], *, tally: Tally | None = None
) -> list[tuple[uuid.UUID, State]]:
    """Cancel every unfinished job ``which`` selects, in one statement (a running one's attempt
    closed ``cancelled`` with it); returns each with the state it was in. ``tally``: counts them."""
    previous = (
        sa.select(jobs.c.id, jobs.c.state, jobs.c.attempt, jobs.c.kind, jobs.c.queue)
        .where(which, jobs.c.state.in_(sources("cancel")))
        .with_for_update()
        .cte("previous")
    )
    cancelled = (
        sa.update(jobs)
        .where(jobs.c.id == previous.c.id)
        .values(state="cancelled", finished_at=now(), lease_until=None)
        .returning(jobs.c.id)
        .cte("cancelled")
    )
    history = close_attempt(
        previous.c.id, previous.c.attempt, "cancelled", when=[previous.c.state == "running"]
    ).cte("history")
    rows = conn.execute(
        sa.select(previous.c.id, previous.c.state, previous.c.kind, previous.c.queue)
        .join(cancelled, cancelled.c.id == previous.c.id)
        .add_cte(history)
    ).all()
    if tally is not None:
        for row in rows:
            tally.count(FINISHED, row.kind, row.queue, "cancelled")
            if row.state == "running":
                tally.count(ATTEMPTS, row.kind, row.queue, "cancelled")
    return [(row.id, row.state) for row in rows]


def progress(conn: sa.Connection, job_id: uuid.UUID, attempt: int, report: dict[str, Any]) -> bool:
    """Store a running job's latest progress report."""
    result = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.state == "running")
        .values(progress=report)
    )
    return result.rowcount == 1


def release_lease(conn: sa.Connection, job_id: uuid.UUID, worker: str | None) -> Status | None:
    """The attempt ended without finishing on ``worker`` (its pool process was lost, or the soft
    shutdown expired): its lease ends now, so the redelivered message claims the job at once.
    ``None`` when the job is not running there (finished already, or never claimed)."""
    row = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == "running", jobs.c.worker == worker)
        .values(lease_until=now())
        .returning(jobs.c.state, jobs.c.attempt, jobs.c.max_attempts, jobs.c.queue)
    ).first()
    return None if row is None else Status(row.state, row.attempt, row.max_attempts, row.queue)


def end_leases_of(conn: sa.Connection, worker: str) -> int:
    """The worker process ``worker`` is gone (its supervisor saw it die): the leases of the jobs
    it was running end now, so the rescuer (or a redelivery) runs them again at once, as after
    ``release_lease``. Returns how many."""
    ended = conn.execute(
        sa.update(jobs)
        .where(jobs.c.state == "running", jobs.c.worker == worker, jobs.c.lease_until > now())
        .values(lease_until=now())
        .returning(jobs.c.id)
    ).all()
    return len(ended)


def hand_back(conn: sa.Connection, job_id: uuid.UUID) -> bool:
    """A worker got this queued job's message but does not implement its kind: no attempt is
    spent; the message is gone, and the relay publishes the job again once a live worker that
    implements the kind consumes its queue. ``False`` if the job is not queued (a stale copy)."""
    handed = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == "queued")
        .values(published_at=None, handed_back_at=now())
        .returning(jobs.c.id)
    ).first()
    return handed is not None
