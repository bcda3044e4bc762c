"""A schedule's firings: the job or workflow it submits per slot, and reading them back from the ledger.

A firing is an ordinary job whose (schedule, slot) pair is unique in the
ledger, or, for a schedule that fires a workflow, a workflow whose pair is
unique in the ``workflows`` table: a slot never fires twice, even with two
leaders at once. Its ``submitted_by`` says which schedule fired it, and
whether by hand. ``jobs.workflows`` is imported only to fire a workflow.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on

from jobs import db
from jobs.errors import BadInput
from jobs.schedules.spec import workflow_error, workflow_of
from jobs.schema import jobs, workflows
from jobs.settings import Settings
from jobs.states import ACTIVE_STATES, workflow_state

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from jobs.producer import JobId, Producer
    from jobs.workflows import WorkflowId

__all__ = [
    "MANUAL",
    "Firing",
    "busy_firing",
    "fire",
    "fired_by",
    "is_manual",
    "recent_firings",
    "workflow_states",
]

MANUAL = "manual"


def fired_by(name: str, manual_by: str | None = None) -> str:
    """The ``submitted_by`` of a firing: ``schedule:NAME``, or ``schedule:NAME manual (WHO)``."""
    return f"schedule:{name}" if manual_by is None else f"schedule:{name} {MANUAL} ({manual_by})"


def is_manual(submitted_by: str | None) -> bool:
    return bool(submitted_by) and f" {MANUAL} (" in str(submitted_by)


def fire(
    producer: Producer, session: Session, row: Any, slot: datetime, *, submitted_by: str
) -> JobId | WorkflowId:
    """Submit one firing of a schedule row for ``slot``, in ``session``'s transaction: a job, or
    the schedule's workflow (checked again first: ``InvalidWorkflow`` if it no longer passes).

    The (schedule, slot) pair is unique: a slot fired before returns that job or workflow, with
    ``duplicate`` set.
    """
    if row.workflow is not None:
        from jobs.workflows import submit_workflow

        flow = workflow_of(row)
        try:  # refused before anything is written: the transaction goes on (to record the error)
            return submit_workflow(
                flow,
                producer=producer,
                session=session,
                submitted_by=submitted_by,
                schedule_name=row.name,
                schedule_slot=slot,
            )
        except BadInput as error:
            raise workflow_error(flow.name, error) from None
    return producer.submit(
        row.kind,
        row.payload,
        queue=row.queue,
        priority=row.priority,
        session=session,
        schedule_name=row.name,
        schedule_slot=slot,
        submitted_by=submitted_by,
    )


def busy_firing(conn: sa.Connection, name: str) -> str | None:
    """A firing of the schedule not finished yet, in a few words (``job … is still queued``,
    ``workflow … is still running``); ``None`` when every firing finished.

    A workflow is unfinished while one of its jobs is (its derived state is ``running``: a
    retry's replaced jobs are all finished). Both kinds of firing are looked for, so a
    schedule changed from one to the other still waits for its last firing.
    """
    job = conn.execute(
        sa.select(jobs.c.id, jobs.c.state)
        .where(jobs.c.schedule_name == name, jobs.c.state.in_(ACTIVE_STATES))
        .limit(1)
    ).first()
    if job is not None:
        return f"job {job.id} is still {job.state}"
    step = jobs.alias("step")
    unfinished = sa.exists().where(step.c.workflow_id == workflows.c.id, step.c.state.in_(ACTIVE_STATES))
    flow = conn.execute(
        sa.select(workflows.c.id).where(workflows.c.schedule_name == name, unfinished).limit(1)
    ).scalar_one_or_none()
    return None if flow is None else f"workflow {flow} is still running"


def workflow_states(conn: sa.Connection, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The derived state of each workflow still in the ledger (a pruned one is left out).

    Derived as everywhere (``jobs.states.workflow_state``) from each step's newest job.
    """
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = conn.execute(
        sa.select(jobs.c.workflow_id, jobs.c.state)
        .where(jobs.c.workflow_id.in_(wanted))
        .ext(distinct_on(jobs.c.workflow_id, jobs.c.step))
        .order_by(jobs.c.workflow_id, jobs.c.step, jobs.c.created_at.desc(), jobs.c.id)
    ).all()
    states: dict[uuid.UUID, list[str]] = {}
    for row in rows:
        states.setdefault(row.workflow_id, []).append(row.state)
    return {workflow_id: derived(found) for workflow_id, found in states.items()}


def derived(states: Sequence[str]) -> str:
    """A workflow's state from its steps' states (``jobs.states.workflow_state``)."""
    return workflow_state(states)


@dataclass(frozen=True, slots=True)
class Firing:
    """One job or workflow a schedule fired, as ``jobs schedule show`` lists it."""

    id: str
    slot: datetime
    state: str
    created_at: datetime
    manual: bool
    workflow: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The firing as ``--json`` prints it."""
        return asdict(self)


def recent_firings(settings: Settings, name: str, limit: int = 10) -> list[Firing]:
    """The newest jobs and workflows a schedule fired, newest slot first."""
    with db.transaction(settings) as conn:
        fired_jobs = conn.execute(
            sa.select(jobs.c.id, jobs.c.schedule_slot, jobs.c.state, jobs.c.created_at, jobs.c.submitted_by)
            .where(jobs.c.schedule_name == name)
            .order_by(jobs.c.schedule_slot.desc())
            .limit(limit)
        ).all()
        fired_flows = conn.execute(
            sa.select(
                workflows.c.id, workflows.c.schedule_slot, workflows.c.created_at, workflows.c.submitted_by
            )
            .where(workflows.c.schedule_name == name)
            .order_by(workflows.c.schedule_slot.desc())
            .limit(limit)
        ).all()
        states = workflow_states(conn, (row.id for row in fired_flows))
    found = [
        Firing(str(row.id), row.schedule_slot, row.state, row.created_at, is_manual(row.submitted_by))
        for row in fired_jobs
    ]
    found += [
        Firing(
            str(row.id),
            row.schedule_slot,
            states.get(row.id, "pruned"),
            row.created_at,
            is_manual(row.submitted_by),
            workflow=True,
        )
        for row in fired_flows
    ]
    return sorted(found, key=lambda firing: firing.slot, reverse=True)[:limit]
