"""The batched worker's transitions: several jobs claimed, finished or handed back in one statement.

``jobs worker -P batched`` (``workers.batching``) takes what its consumer
received in the last few milliseconds as one batch: one durable statement
claims every queued job of the batch, the bodies run one after another, one
durable statement records every plain success, then the messages are
acknowledged. They are the same transitions as ``jobs.ledger.attempts``'
(``queued --claim--> running``, ``running --succeed--> succeeded``), with the
attempt history written in the same statement, plus the batch's own two:

- ``unclaim``: a job the batch claimed but whose body never started (the
  worker is shutting down, or stopping a body at its hard time limit) goes
  back to ``queued`` with its attempt undone, so a job on its last attempt is
  not failed for an attempt that never ran; the supervisor of a process that died
  does the same for the jobs its record (``jobs.unstarted``) shows never started
  (``unclaim_lost``);
- ``renew``: the leases of the jobs still waiting their turn in a batch are
  extended before they would expire (a batch whose first bodies ran long).

Each statement names its jobs by id with the worker's node name, which is
unique per worker process: a job another worker took over is left alone.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from jobs.ledger.attempts import Claimed, Finished, claimed_columns, claimed_from, open_attempts
from jobs.ledger.lifecycle import sources, targets
from jobs.ledger.statements import close_attempt, execute_all, now, param, seconds_since
from jobs.schema import job_attempts, jobs

__all__ = ["claim_batch", "renew", "succeed_batch", "unclaim", "unclaim_lost"]


def _ids() -> sa.BindParameter[Any]:
    return param("w_ids", pg.ARRAY(sa.Uuid))


def _is(state: str) -> sa.ColumnElement[bool]:
    # "IS TRUE" keeps the planner on the primary key (see attempts._finish_statement).
    return (jobs.c.state == state).self_group().is_(sa.true())


@functools.cache
def _claim_statement() -> sa.Select[Any]:
    assert sources("claim") == ("queued", "running")
    assert targets("claim") == {"running"}
    claimed = (
        sa.update(jobs)
        .where(jobs.c.id == sa.any_(_ids()), _is("queued"))
        .values(
            state="running",
            attempt=jobs.c.attempt + 1,
            lease_until=now() + param("w_lease", sa.Interval),
            started_at=now(),
            worker=param("w_worker", sa.Text),
        )
        .returning(*claimed_columns())
        .cte("claimed")
    )
    return sa.select(claimed).add_cte(open_attempts(claimed))


def claim_batch(
    conn: psycopg.Connection[Any], ids: Sequence[uuid.UUID], *, worker: str, lease: float
) -> dict[uuid.UUID, Claimed]:
    """Claim every one of ``ids`` that is ``queued``, for one attempt each; returns them by id.

    A job not returned is not queued (a duplicate delivery, a lease to take over, a message from
    outside, a cancelled job): the caller runs its message through the single-job path."""
    params = {"w_ids": sorted(set(ids)), "w_worker": worker, "w_lease": timedelta(seconds=lease)}
    return {row.id: claimed_from(row) for row in execute_all(conn, _claim_statement(), params)}


@functools.cache
def _succeed_statement() -> sa.Select[Any]:
    assert sources("succeed") == ("running",)
    assert targets("succeed") == {"succeeded"}
    batch = (
        sa.func.unnest(
            _ids(), param("w_attempts", pg.ARRAY(sa.Integer)), param("w_results", pg.ARRAY(sa.Text))
        )
        .table_valued(
            sa.column("id", sa.Uuid), sa.column("attempt", sa.Integer), sa.column("result", sa.Text)
        )
        .render_derived(name="batch", with_types=False)
    )
    ended = sa.func.statement_timestamp()
    finished = (
        sa.update(jobs)
        .where(jobs.c.id == batch.c.id, jobs.c.attempt == batch.c.attempt, _is("running"))
        .values(
            state="succeeded",
            lease_until=None,
            result=sa.cast(batch.c.result, pg.JSONB),
            finished_at=ended,
            error=None,
        )
        .returning(
            jobs.c.id,
            jobs.c.attempt,
            jobs.c.kind,
            jobs.c.queue,
            seconds_since(jobs.c.started_at, sa.func.clock_timestamp()).label("ran"),
        )
        .cte("finished")
    )
    history = close_attempt(finished.c.id, finished.c.attempt, "succeeded", open_only=False, at=ended).cte(
        "history"
    )
    return sa.select(finished.c.id, finished.c.kind, finished.c.queue, finished.c.ran).add_cte(history)


def succeed_batch(
    conn: psycopg.Connection[Any], done: Sequence[tuple[uuid.UUID, int, str | None]]
) -> dict[uuid.UUID, Finished]:
    """Record the success of each ``(job id, attempt, result as JSON text or None)`` in one
    statement; returns what was recorded, by id. A job missing from it is no longer that
    attempt's (cancelled, or taken over after its lease expired): nothing was recorded for it."""
    ordered = sorted(done)  # rows locked in one order: two batches never wait on each other in a cycle
    params = {
        "w_ids": [job_id for job_id, _, _ in ordered],
        "w_attempts": [attempt for _, attempt, _ in ordered],
        "w_results": [result for _, _, result in ordered],
    }
    return {
        row.id: Finished(row.kind, row.queue, None, row.ran)
        for row in execute_all(conn, _succeed_statement(), params)
    }


@functools.cache
def _unclaim_statement(republish: bool = False) -> sa.Select[Any]:
    assert sources("unclaim") == ("running",)
    assert targets("unclaim") == {"queued"}
    first = jobs.c.attempt == 1
    # A lost process's messages wait in Redis's unacked set for the visibility timeout: its jobs
    # are handed back as a worker without their kind hands its back, for the relay to publish.
    again = {"published_at": None, "handed_back_at": now()} if republish else {}
    undone = (
        sa.update(jobs)
        .where(jobs.c.id == sa.any_(_ids()), _is("running"), jobs.c.worker == param("w_worker", sa.Text))
        .values(
            state="queued",
            attempt=jobs.c.attempt - 1,
            lease_until=None,
            started_at=sa.case((first, None), else_=jobs.c.started_at),
            worker=sa.case((first, None), else_=jobs.c.worker),
            **again,
        )
        .returning(jobs.c.id, (jobs.c.attempt + 1).label("attempt"))
        .cte("undone")
    )
    forgotten = (
        sa.delete(job_attempts)
        .where(job_attempts.c.job_id == undone.c.id, job_attempts.c.attempt == undone.c.attempt)
        .cte("forgotten")
    )
    return sa.select(undone.c.id).add_cte(forgotten)


def unclaim(conn: psycopg.Connection[Any], ids: Sequence[uuid.UUID], *, worker: str) -> set[uuid.UUID]:
    """Hand back jobs this worker claimed but never started: ``queued`` again, their attempt
    undone (number and history row). Returns the ids it handed back."""
    params = {"w_ids": sorted(set(ids)), "w_worker": worker}
    return {row.id for row in execute_all(conn, _unclaim_statement(), params)}


def unclaim_lost(conn: sa.Connection, ids: Sequence[uuid.UUID], *, worker: str) -> set[uuid.UUID]:
    """``unclaim`` for the supervisor of a batched worker process that died (``jobs.unstarted``):
    its messages are out of reach, so the jobs are also marked for the relay to publish again
    once a live worker implements their kind (``publishing.take_unpublished``)."""
    statement = _unclaim_statement(republish=True)
    rows = conn.execute(statement, {"w_ids": sorted(set(ids)), "w_worker": worker}).all()
    return {row.id for row in rows}


@functools.cache
def _renew_statement() -> sa.Update:
    return (
        sa.update(jobs)
        .where(jobs.c.id == sa.any_(_ids()), _is("running"), jobs.c.worker == param("w_worker", sa.Text))
        .values(lease_until=now() + param("w_lease", sa.Interval))
        .returning(jobs.c.id)
    )


def renew(
    conn: psycopg.Connection[Any], ids: Sequence[uuid.UUID], *, worker: str, lease: float
) -> set[uuid.UUID]:
    """Extend the leases of jobs this worker holds to ``lease`` seconds from now; returns the ids
    still held (one missing was cancelled, or taken over)."""
    params = {"w_ids": sorted(set(ids)), "w_worker": worker, "w_lease": timedelta(seconds=lease)}
    return {row.id for row in execute_all(conn, _renew_statement(), params)}
