"""What operators see of workflows: one with its steps as a graph, and lists of them
(docs/workflows.md).

A workflow's state is derived from its steps, never stored: ``running`` while a step is not
finished, else ``failed`` if a step failed, else ``cancelled`` if a step was cancelled, else
``succeeded``. A step is the newest job of its name in the workflow (a retry adds jobs to the
steps it re-runs; the older ones stay, replaced, as history).
"""

from __future__ import annotations

import graphlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on

from jobs import db
from jobs.errors import WorkflowNotFound
from jobs.schema import job_deps, jobs, workflows
from jobs.settings import Settings
from jobs.states import workflow_state

__all__ = [
    "STATES",
    "StepView",
    "WorkflowSummary",
    "WorkflowView",
    "current_steps",
    "derive",
    "list_workflows",
    "status",
]

#: A workflow's states (derived from its steps).
STATES = ("running", "succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class StepView:
    """One step as operators see it: its job, state, parents (with their policy) and timings."""

    name: str
    job_id: uuid.UUID
    kind: str
    queue: str
    state: str
    after: tuple[tuple[str, str], ...]
    attempt: int
    max_attempts: int
    pending: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    replaced: int
    """How many older jobs of this step a retry replaced."""

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max((self.finished_at - self.started_at).total_seconds(), 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "job_id": str(self.job_id),
            "kind": self.kind,
            "queue": self.queue,
            "state": self.state,
            "after": [{"step": step, "when": when} for step, when in self.after],
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "waiting_for": self.pending if self.state == "held" else 0,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration": self.duration,
            "error": self.error,
            "replaced": self.replaced,
        }


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    """A workflow in a list: its state and how many steps are in each state."""

    id: uuid.UUID
    name: str
    state: str
    steps: int
    counts: dict[str, int]
    created_at: datetime
    finished_at: datetime | None
    submitted_by: str | None
    schedule_name: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "state": self.state,
            "steps": self.steps,
            "counts": self.counts,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "submitted_by": self.submitted_by,
            "schedule": self.schedule_name,
        }


@dataclass(frozen=True, slots=True)
class WorkflowView:
    """One workflow with its steps, every parent before its children."""

    summary: WorkflowSummary
    steps: list[StepView] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary.as_dict(), "step_list": [step.as_dict() for step in self.steps]}


def derive(counts: dict[str, int]) -> str:
    """A workflow's state from how many of its steps are in each state."""
    return workflow_state(state for state, count in counts.items() if count)


def current_steps(workflow_id: Any) -> sa.Subquery:
    """The newest job of each step of a workflow."""
    return (
        sa.select(jobs)
        .where(jobs.c.workflow_id == workflow_id)
        .ext(distinct_on(jobs.c.step))
        .order_by(jobs.c.step, jobs.c.created_at.desc(), jobs.c.id)
        .subquery("current")
    )


def status(settings: Settings, workflow_id: uuid.UUID) -> WorkflowView:
    """One workflow and its steps; ``WorkflowNotFound`` when the ledger has no such workflow."""
    with db.transaction(settings) as conn:
        head = conn.execute(sa.select(workflows).where(workflows.c.id == workflow_id)).first()
        if head is None:
            raise WorkflowNotFound(f"no workflow has id {workflow_id}")
        current = current_steps(workflow_id)
        rows = conn.execute(sa.select(current)).all()
        parent = jobs.alias("parent")
        edges = conn.execute(
            sa.select(job_deps.c.child_id, parent.c.step, job_deps.c.policy)
            .join(parent, parent.c.id == job_deps.c.parent_id)
            .where(
                job_deps.c.child_id
                == sa.any_(sa.bindparam(None, [row.id for row in rows], type_=sa.ARRAY(sa.Uuid)))
            )
            .order_by(job_deps.c.child_id, job_deps.c.position)
        ).all()
        replaced: dict[str, int] = dict(
            conn.execute(
                sa.select(jobs.c.step, sa.func.count() - 1)
                .where(jobs.c.workflow_id == workflow_id)
                .group_by(jobs.c.step)
            ).all()
        )
    after: dict[uuid.UUID, list[tuple[str, str]]] = {}
    for edge in edges:
        after.setdefault(edge.child_id, []).append((edge.step, edge.policy))
    steps = {
        row.step: StepView(
            name=row.step,
            job_id=row.id,
            kind=row.kind,
            queue=row.queue,
            state=row.state,
            after=tuple(after.get(row.id, [])),
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            pending=row.pending,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            error=(row.error or {}).get("message"),
            replaced=int(replaced.get(row.step, 0)),
        )
        for row in rows
    }
    ordered = _ordered(steps)
    counts: dict[str, int] = {}
    for step in ordered:
        counts[step.state] = counts.get(step.state, 0) + 1
    state = derive(counts)
    finished = [step.finished_at for step in ordered if step.finished_at is not None]
    summary = WorkflowSummary(
        head.id,
        head.name,
        state,
        len(ordered),
        counts,
        head.created_at,
        max(finished) if state != "running" and finished else None,
        head.submitted_by,
        head.schedule_name,
    )
    return WorkflowView(summary, ordered)


def _ordered(steps: dict[str, StepView]) -> list[StepView]:
    """Every parent before its children; otherwise by name, numbers in names by their value
    (``shard-2`` before ``shard-10``)."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name, step in steps.items():
        sorter.add(name, *(parent for parent, _ in step.after if parent in steps))
    sorter.prepare()
    key = {name: (_natural(name),) for name in steps}
    placed: list[StepView] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=key.__getitem__)
        placed.extend(steps[name] for name in ready)
        sorter.done(*ready)
    return placed


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def list_workflows(
    settings: Settings,
    *,
    states: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
) -> list[WorkflowSummary]:
    """The newest workflows first, filtered by derived state, name and creation time."""
    current = (
        sa.select(jobs.c.state, jobs.c.finished_at)
        .where(jobs.c.workflow_id == workflows.c.id)
        .ext(distinct_on(jobs.c.step))
        .order_by(jobs.c.step, jobs.c.created_at.desc(), jobs.c.id)
        .lateral("current")
    )
    per_state = {
        state: sa.func.count().filter(current.c.state == state).label(state)
        for state in (
            "scheduled",
            "held",
            "queued",
            "running",
            "retrying",
            "succeeded",
            "failed",
            "cancelled",
        )
    }
    finished_at = sa.func.max(current.c.finished_at).label("last_finished_at")
    query = (
        sa.select(workflows, *per_state.values(), finished_at)
        .select_from(workflows.join(current, sa.true(), isouter=True))
        .group_by(workflows.c.id)
    )
    if names:
        query = query.where(workflows.c.name.in_(names))
    if since is not None:
        query = query.where(workflows.c.created_at >= since)
    if until is not None:
        query = query.where(workflows.c.created_at < until)
    unfinished = sum(
        (per_state[state] for state in ("scheduled", "held", "queued", "running", "retrying")),
        start=sa.literal(0),
    )
    derived = sa.case(
        (unfinished > 0, "running"),
        (per_state["failed"] > 0, "failed"),
        (per_state["cancelled"] > 0, "cancelled"),
        else_="succeeded",
    )
    if states:
        query = query.having(derived.in_(states))
    query = query.order_by(workflows.c.created_at.desc(), workflows.c.id).limit(limit)
    with db.transaction(settings) as conn:
        rows = conn.execute(query).all()
    found = []
    for row in rows:
        counts = {state: int(getattr(row, state)) for state in per_state if getattr(row, state)}
        state = derive(counts)
        found.append(
            WorkflowSummary(
                row.id,
                row.name,
                state,
                row.steps,
                counts,
                row.created_at,
                row.last_finished_at if state != "running" else None,
                row.submitted_by,
                row.schedule_name,
            )
        )
    return found
