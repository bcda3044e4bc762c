"""What operators do to a workflow: cancel it whole, retry what failed in it (docs/workflows.md).

What they see of one (its state, its steps as a graph) is ``jobs.workflow_views``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from jobs import control, counters, db, kinds, ledger, publisher, workflow_views
from jobs.errors import InvalidTransition, WorkflowNotFound
from jobs.schema import job_deps, jobs, workflows
from jobs.settings import Settings
from jobs.states import TERMINAL_STATES

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["Retried", "cancel", "retry"]


def cancel(settings: Settings, app: Celery, workflow_id: uuid.UUID) -> list[ledger.CancelledStep]:
    """Cancel every unfinished step of the workflow in one statement; running steps are stopped
    after the commit. Returns the steps cancelled (none when it had finished)."""
    tally = counters.Tally()
    with db.transaction(settings) as conn:
        _lock(conn, workflow_id)
        cancelled = ledger.cancel_workflow(conn, workflow_id, tally=tally)
        # Steps under a limit free their slots: the next waiting jobs are admitted with the cancel.
        admitted = ledger.release(conn, [step.id for step in cancelled], tally=tally)
        counters.write(conn, tally.take())
    publisher.publish_committed(settings, kinds.registry, admitted)
    running = [str(step.id) for step in cancelled if step.state == "running"]
    if running:
        control.revoke(app, running)
    return cancelled


def _lock(conn: sa.Connection, workflow_id: uuid.UUID) -> None:
    """Lock the workflow's row (a cancel and a retry of one workflow take turns), or raise."""
    found = conn.execute(
        sa.select(workflows.c.id).where(workflows.c.id == workflow_id).with_for_update()
    ).scalar_one_or_none()
    if found is None:
        raise WorkflowNotFound(f"no workflow has id {workflow_id}")


@dataclass(frozen=True, slots=True)
class Retried:
    """What a workflow retry did: the new job of each step it re-runs."""

    workflow_id: uuid.UUID
    steps: dict[str, uuid.UUID]


def retry(settings: Settings, workflow_id: uuid.UUID, *, submitted_by: str | None = None) -> Retried:
    """Re-run the failed and cancelled steps of a finished workflow and every step after them;
    steps that succeeded keep their results (their dependents read them again)."""
    with db.transaction(settings) as conn:
        _lock(conn, workflow_id)
        current = workflow_views.current_steps(workflow_id)
        rows = {row.step: row for row in conn.execute(sa.select(current)).all()}
        parent = jobs.alias("parent")
        edges = conn.execute(
            sa.select(job_deps.c.child_id, parent.c.step, job_deps.c.position, job_deps.c.policy)
            .join(parent, parent.c.id == job_deps.c.parent_id)
            .where(
                job_deps.c.child_id
                == sa.any_(sa.bindparam(None, [row.id for row in rows.values()], type_=sa.ARRAY(sa.Uuid)))
            )
            .order_by(job_deps.c.child_id, job_deps.c.position)
        ).all()
        unfinished = [name for name, row in rows.items() if row.state not in TERMINAL_STATES]
        if unfinished:
            raise InvalidTransition(
                f"workflow {workflow_id} is still running ({len(unfinished)} step(s) not finished): "
                "wait for it, or cancel it first (jobs workflow cancel)"
            )
        parents: dict[str, list[tuple[str, str]]] = {name: [] for name in rows}
        children: dict[str, list[str]] = {name: [] for name in rows}
        by_id = {row.id: name for name, row in rows.items()}
        for edge in edges:
            child = by_id[edge.child_id]
            parents[child].append((edge.step, edge.policy))
            children.setdefault(edge.step, []).append(child)
        again = {name for name, row in rows.items() if row.state in ("failed", "cancelled")}
        if not again:
            raise InvalidTransition(f"workflow {workflow_id} succeeded: nothing to retry")
        todo = list(again)
        while todo:  # every step after one that runs again runs again
            for child in children.get(todo.pop(), []):
                if child not in again:
                    again.add(child)
                    todo.append(child)
        new_ids = {name: uuid.uuid4() for name in again}
        new_rows = []
        new_edges = []
        for name in sorted(again):
            old = rows[name]
            new_rows.append(
                ledger.NewJob(
                    id=new_ids[name],
                    kind=old.kind,
                    queue=old.queue,
                    priority=old.priority,
                    payload=old.payload,
                    state="held",
                    max_attempts=old.max_attempts,
                    submitted_by=submitted_by,
                    retry_of=old.id,
                    limited=old.limited,
                    workflow_id=workflow_id,
                    step=name,
                    pending=sum(1 for parent_name, _ in parents[name] if parent_name in again),
                    inputs=old.inputs,
                )
            )
            for position, (parent_name, policy) in enumerate(parents[name]):
                rerun = parent_name in again
                new_edges.append(
                    ledger.Edge(
                        new_ids[name],
                        new_ids[parent_name] if rerun else rows[parent_name].id,
                        position,
                        policy,
                        None if rerun else rows[parent_name].state,
                    )
                )
        ledger.copy_rows(conn, new_rows, steps=True)
        ledger.link(conn, new_edges)
        tally = counters.Tally()
        first = ledger.release_ready(conn, [row.id for row in new_rows if row.pending == 0], tally=tally)
        counters.write(conn, tally.take())
    publisher.publish_committed(settings, kinds.registry, first)
    return Retried(workflow_id, new_ids)
