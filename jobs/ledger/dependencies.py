"""Workflows' half of the ledger: workflows, their dependency edges, and the release of a step
when its parents have finished (docs/workflows.md).

A step with parents is created ``held`` with ``pending`` = its number of parents and one
``job_deps`` edge per parent. When a parent reaches a terminal state, the same transaction
(``release``, called wherever a job finishes, with flow control's release) does, in one
statement: mark each of the parent's unresolved edges ``resolved`` with its state (an edge is
counted once, whoever calls), and take the count off each held child's ``pending``. Two parents
finishing at once on two workers serialize on the child's row (each locks the children it counts
in order of id, so parents sharing several children never deadlock), and the second sees the
first's count (PostgreSQL re-reads a row it waited for), so exactly one of them brings it to zero:

- a child whose edge required success (``policy = 'succeeded'``, the default) and whose parent
  failed or was cancelled is cancelled now (``held --cancel--> cancelled``, the error names the
  parent), and its own dependents are resolved in turn;
- a child whose ``pending`` reached zero is released (``jobs.ledger.steps``: its inputs
  resolved, its payload validated; queued, held for its limits, or rejected). Publishing happens
  after the commit, as always.

The leader's ``settle`` is the safety net: an edge whose parent is finished but which no release
counted (none should exist) is counted there.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.counters import FINISHED, Tally
from jobs.ledger.attempts import cancel_where
from jobs.ledger.publishing import Published
from jobs.ledger.statements import any_id, now, seconds
from jobs.ledger.steps import release_steps
from jobs.schema import job_deps, jobs, workflows
from jobs.states import TERMINAL_STATES

__all__ = [
    "CancelledStep",
    "Edge",
    "NewWorkflow",
    "cancel_workflow",
    "link",
    "open_workflow",
    "prune_workflows",
    "release_children",
    "release_ready",
    "settle_dependents",
    "workflow_for_slot",
]

_TERMINAL = list(TERMINAL_STATES)


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A workflow about to enter the ledger."""

    id: uuid.UUID
    name: str
    steps: int
    submitted_by: str | None = None
    schedule_name: str | None = None
    schedule_slot: datetime | None = None


@dataclass(frozen=True, slots=True)
class Edge:
    """The child runs after the parent; ``resolved``: the parent's terminal state if it is
    finished already (a workflow retry links new steps to parents that succeeded before)."""

    child_id: uuid.UUID
    parent_id: uuid.UUID
    position: int
    policy: str = "succeeded"
    resolved: str | None = None


def open_workflow(conn: sa.Connection, workflow: NewWorkflow) -> bool:
    """Insert the workflow's row; ``False`` when its schedule's slot has fired a workflow already."""
    statement = pg_insert(workflows).values(
        id=workflow.id,
        name=workflow.name,
        steps=workflow.steps,
        submitted_by=workflow.submitted_by,
        schedule_name=workflow.schedule_name,
        schedule_slot=workflow.schedule_slot,
    )
    if workflow.schedule_name is not None:
        statement = statement.on_conflict_do_nothing(
            index_elements=[workflows.c.schedule_name, workflows.c.schedule_slot],
            index_where=sa.text("schedule_name IS NOT NULL"),
        )
    return conn.execute(statement.returning(workflows.c.id)).first() is not None


def workflow_for_slot(conn: sa.Connection, schedule: str, slot: datetime) -> uuid.UUID | None:
    """The workflow that a schedule's slot fired, if any."""
    return conn.execute(
        sa.select(workflows.c.id).where(
            workflows.c.schedule_name == schedule, workflows.c.schedule_slot == slot
        )
    ).scalar_one_or_none()


def link(conn: sa.Connection, edges: Sequence[Edge]) -> None:
    """Insert dependency edges (with COPY: a fan-out of thousands is one round trip)."""
    if not edges:
        return
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    with (
        raw.cursor() as cursor,
        cursor.copy("COPY job_deps (child_id, parent_id, position, policy, resolved) FROM STDIN") as copy,
    ):
        copy.set_types(["uuid", "uuid", "int4", "text", "text"])
        for edge in edges:
            copy.write_row((edge.child_id, edge.parent_id, edge.position, edge.policy, edge.resolved))


@dataclass(slots=True)
class _Child:
    pending: int = 0
    doomed_by: tuple[str, str] | None = None  # (parent step, its state) that cancels the child


@functools.cache
def _count_statement() -> sa.CompoundSelect[Any]:
    """``_count``'s one statement, built once: building it (two aliases of ``jobs``, whose every
    column is copied) cost more CPU than running it, on every step's finish."""
    parent = jobs.alias("parent")
    parent_ids = sa.bindparam("parent_ids", type_=pg.ARRAY(sa.Uuid))
    consumed = (
        sa.update(job_deps)
        .where(
            job_deps.c.parent_id == sa.any_(parent_ids),
            job_deps.c.resolved.is_(None),
            job_deps.c.parent_id == parent.c.id,
            # Said of the parent too: else, with statistics taken while few jobs had finished,
            # the parents are found by walking every finished job (``ix_jobs_state_created_at``).
            parent.c.id == sa.any_(parent_ids),
            parent.c.state.in_(_TERMINAL),
        )
        .values(resolved=parent.c.state)
        .returning(job_deps.c.child_id, job_deps.c.parent_id, job_deps.c.policy, job_deps.c.resolved)
        .cte("consumed")
    )
    counted = (
        sa.select(consumed.c.child_id, sa.func.count().label("n"))
        .group_by(consumed.c.child_id)
        .cte("counted")
    )
    # The children's rows are locked in one order, by id, before any is counted down: two parents
    # that share children (neighbours in a layered workflow) finishing at once deadlocked when
    # each locked them in the order of its own count. A row another parent's finish holds is
    # waited for, then counted from its new value (PostgreSQL re-reads a row it waited for).
    # Each CTE is estimated at a row, so each joins ``jobs`` by id alone, and only the one before
    # it: two CTEs joined, or ``state = 'held'`` said of ``jobs`` (its partial index, estimated
    # empty), were planned as nested loops over every child or every held job, for each child.
    locked = (
        sa.select(jobs.c.id, jobs.c.state, counted.c.n)
        .join(counted, counted.c.child_id == jobs.c.id)
        .order_by(jobs.c.id)
        .with_for_update(of=jobs)
        .cte("locked")
    )
    decremented = (
        sa.update(jobs)
        .where(jobs.c.id == locked.c.id, locked.c.state == "held")
        .values(pending=jobs.c.pending - locked.c.n)
        .returning(jobs.c.id, jobs.c.pending)
        .cte("decremented")
    )
    named = jobs.alias("named")
    # Two result sets in one: the edges counted (with their parent's step) and the children whose
    # count moved, joined by the caller (joined here: 12 s for a fan-out of 10,000).
    edges = sa.select(
        consumed.c.child_id,
        consumed.c.policy,
        consumed.c.resolved,
        named.c.step,
        sa.null().label("pending"),
    ).join(named, named.c.id == consumed.c.parent_id)
    moved = sa.select(decremented.c.id, sa.null(), sa.null(), sa.null(), decremented.c.pending)
    return sa.union_all(edges, moved)


def _count(conn: sa.Connection, parent_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, _Child]:
    """Count the ends of these parents (those finished) against their held children, each edge
    once: returns each child whose count moved, with its ``pending`` after, and the parent that
    dooms it (a required parent that did not succeed)."""
    rows = conn.execute(_count_statement(), {"parent_ids": list(parent_ids)}).all()
    pending = {row.child_id: row.pending for row in rows if row.pending is not None}
    children: dict[uuid.UUID, _Child] = {}
    for row in rows:
        if row.pending is not None or row.child_id not in pending:
            continue  # a child's new count, or an edge to a child no longer held
        child = children.setdefault(row.child_id, _Child(pending[row.child_id]))
        if row.policy == "succeeded" and row.resolved != "succeeded" and child.doomed_by is None:
            child.doomed_by = (row.step or "?", row.resolved)
    return children


def release_children(
    conn: sa.Connection, ids: Sequence[uuid.UUID], *, tally: Tally | None = None
) -> list[Published]:
    """After these jobs finished (in this transaction): count their ends against their workflow
    children, cancel the children a failed required parent dooms (and resolve theirs in turn),
    and release the children whose parents have all finished. Returns the jobs to publish. One
    statement for jobs without children."""
    published: list[Published] = []
    parents = list(ids)
    while parents:
        children = _count(conn, parents)
        doomed = {child_id: child.doomed_by for child_id, child in children.items() if child.doomed_by}
        ready = [
            child_id for child_id, child in children.items() if not child.doomed_by and child.pending == 0
        ]
        cancelled = _cancel_doomed(conn, doomed, tally) if doomed else []
        if ready:
            released, rejected = release_steps(conn, ready, tally)
            published += released
            cancelled += rejected
        parents = cancelled  # their own children are resolved next
    return published


def release_ready(
    conn: sa.Connection, ids: Sequence[uuid.UUID], *, tally: Tally | None = None
) -> list[Published]:
    """Release these held steps whose parents have all finished already (a workflow retry's new
    steps with no parent left to wait for), and resolve the dependents of any that fail."""
    ready = list(
        conn.execute(
            sa.select(jobs.c.id).where(any_id(ids), jobs.c.state == "held", jobs.c.pending == 0)
        ).scalars()
    )
    if not ready:
        return []
    released, rejected = release_steps(conn, ready, tally)
    return released + (release_children(conn, rejected, tally=tally) if rejected else [])


def _cancel_doomed(
    conn: sa.Connection, doomed: dict[uuid.UUID, tuple[str, str]], tally: Tally | None
) -> list[uuid.UUID]:
    """Cancel held children whose required parent failed or was cancelled; returns them."""
    messages = {
        child_id: f"not run: step {step!r}, which it needs to succeed, {state}"
        for child_id, (step, state) in doomed.items()
    }
    values = sa.values(sa.column("id", sa.Uuid), sa.column("message", sa.Text), name="why").data(
        list(messages.items())
    )
    error = sa.func.jsonb_build_object("type", "ParentFailed", "message", values.c.message)
    rows = conn.execute(
        sa.update(jobs)
        .where(jobs.c.id == values.c.id, jobs.c.state == "held")
        .values(state="cancelled", finished_at=now(), error=error)
        .returning(jobs.c.id, jobs.c.kind, jobs.c.queue)
    ).all()
    if tally is not None:
        for row in rows:
            tally.count(FINISHED, row.kind, row.queue, "cancelled")
    return [row.id for row in rows]


@dataclass(frozen=True, slots=True)
class CancelledStep:
    """A step a workflow cancel stopped: its job, and the state it was in."""

    id: uuid.UUID
    state: str


def cancel_workflow(
    conn: sa.Connection, workflow_id: uuid.UUID, *, tally: Tally | None = None
) -> list[CancelledStep]:
    """Cancel every unfinished step of the workflow in one statement (running ones' attempts
    closed ``cancelled`` with it); returns them with the state each was in."""
    cancelled = cancel_where(conn, jobs.c.workflow_id == workflow_id, tally=tally)
    return [CancelledStep(job_id, state) for job_id, state in cancelled]


def settle_dependents(
    conn: sa.Connection, *, limit: int = 1000, tally: Tally | None = None
) -> list[Published]:
    """The safety net: count the ends of finished parents whose edges to held steps no release
    counted, as their finish would have."""
    child = jobs.alias("child")
    parent = jobs.alias("parent")
    missed = (
        sa.select(job_deps.c.parent_id)
        .join(child, child.c.id == job_deps.c.child_id)
        .join(parent, parent.c.id == job_deps.c.parent_id)
        .where(
            child.c.state == "held",
            child.c.pending > 0,
            job_deps.c.resolved.is_(None),
            parent.c.state.in_(_TERMINAL),
        )
        .distinct()
        .limit(limit)
    )
    parents = list(conn.execute(missed).scalars())
    return release_children(conn, parents, tally=tally) if parents else []


def prune_workflows(
    conn: sa.Connection, *, older_than: float, failed_older_than: float, limit: int = 100
) -> int:
    """Delete up to ``limit`` workflows whose every step finished more than ``older_than`` seconds
    ago (``failed_older_than`` when a step failed), with their steps' jobs and edges."""
    cutoff = now() - seconds(older_than)
    failed_cutoff = now() - seconds(failed_older_than)
    step = jobs.alias("step")
    recent = sa.exists().where(
        step.c.workflow_id == workflows.c.id,
        sa.or_(
            step.c.state.not_in(_TERMINAL),
            step.c.finished_at >= cutoff,
            sa.and_(step.c.state == "failed", step.c.finished_at >= failed_cutoff),
        ),
    )
    old = (
        sa.select(workflows.c.id)
        .where(workflows.c.created_at < cutoff, ~recent)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return conn.execute(sa.delete(workflows).where(workflows.c.id.in_(old.scalar_subquery()))).rowcount
