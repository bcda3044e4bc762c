"""A job's place in a workflow, for the operators' views of one job (``jobs status``,
``jobs explain``): which workflow it is a step of, its parents with the ends its release
counted, and the newer job that replaced it when the workflow was retried.

A read, never a write (``jobs.ledger.dependencies`` writes ``workflows`` and ``job_deps``);
kept apart from ``jobs.workflow_views``, which draws a whole workflow, so that the views of
one job read only that job's neighbours.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from jobs.schema import job_deps, jobs, workflows

__all__ = ["Parent", "StepOf", "step_of"]


@dataclasses.dataclass(frozen=True, slots=True)
class Parent:
    """A step's parent as the step sees it: ``resolved`` is the parent's end as the step's
    release counted it (None while it has not: the step still waits for it)."""

    step: str
    job_id: uuid.UUID
    state: str
    policy: str
    resolved: str | None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "job_id": str(self.job_id)}


@dataclasses.dataclass(frozen=True, slots=True)
class StepOf:
    """The workflow a job is a step of, its parents in order, and the newer job of the same
    step that a workflow retry made, if any."""

    workflow_id: uuid.UUID
    workflow: str
    step: str
    parents: list[Parent]
    replaced_by: uuid.UUID | None = None

    def waiting(self) -> list[Parent]:
        """The parents whose end the step has not counted yet."""
        return [parent for parent in self.parents if parent.resolved is None]

    def describe(self) -> str:
        return f"step {self.step!r} of workflow {self.workflow!r} ({self.workflow_id})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.workflow_id),
            "name": self.workflow,
            "step": self.step,
            "parents": [parent.as_dict() for parent in self.parents],
            "waiting_for": [parent.step for parent in self.waiting()],
            "replaced_by": str(self.replaced_by) if self.replaced_by else None,
        }


def step_of(conn: sa.Connection, job: Mapping[Any, Any]) -> StepOf | None:
    """The workflow of a job (its row's ``id``, ``workflow_id``, ``step``, ``created_at``); None
    for a job on its own."""
    if job.get("workflow_id") is None:
        return None
    name = conn.execute(sa.select(workflows.c.name).where(workflows.c.id == job["workflow_id"])).scalar_one()
    parent = jobs.alias("parent")
    rows = conn.execute(
        sa.select(parent.c.step, parent.c.id, parent.c.state, job_deps.c.policy, job_deps.c.resolved)
        .join(parent, parent.c.id == job_deps.c.parent_id)
        .where(job_deps.c.child_id == job["id"])
        .order_by(job_deps.c.position)
    ).all()
    newer = conn.execute(
        sa.select(jobs.c.id)
        .where(
            jobs.c.workflow_id == job["workflow_id"],
            jobs.c.step == job["step"],
            jobs.c.created_at > job["created_at"],
        )
        .order_by(jobs.c.created_at.desc(), jobs.c.id)
        .limit(1)
    ).scalar_one_or_none()
    parents = [Parent(row.step, row.id, row.state, row.policy, row.resolved) for row in rows]
    return StepOf(job["workflow_id"], name, job["step"], parents, newer)
