"""Submitting a workflow: every step in one transaction, all or none (docs/workflows.md).

The workflow's row, one job per step (COPY: a fan-out of thousands is one round trip) and one
``job_deps`` edge per dependency are written together. Steps with no parent start as any job
does (queued and published after the commit; ``held`` for admission if their kind is under a
limit); the others wait ``held`` with ``pending`` set to their number of parents, never on the
broker, until the last of them finishes (``jobs.ledger.dependencies``). With ``session=`` the
rows are written in the caller's transaction and the first steps are published after it commits.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobs import db, ledger, submission
from jobs.errors import BadInput, InvalidWorkflow
from jobs.kinds import Registry
from jobs.producer import Producer, default_producer
from jobs.settings import Settings
from jobs.workflows.spec import Plan, PlannedStep, Workflow

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session

__all__ = ["WorkflowId", "check_workflow", "submit_workflow"]


class WorkflowId(uuid.UUID):
    """A submitted workflow's id; ``steps`` maps each step's name to its job's id. ``duplicate``:
    its schedule's slot had fired it already (this is that workflow, and ``steps`` is empty).
    ``published``: its first steps reached Redis now (if not, they are safe in the ledger and the
    relay publishes them later)."""

    __slots__ = ("duplicate", "published", "steps")
    duplicate: bool
    published: bool
    steps: dict[str, uuid.UUID]

    def __init__(
        self,
        value: uuid.UUID,
        *,
        steps: dict[str, uuid.UUID] | None = None,
        duplicate: bool = False,
        published: bool = False,
    ) -> None:
        object.__setattr__(self, "int", value.int)
        object.__setattr__(self, "is_safe", value.is_safe)
        object.__setattr__(self, "steps", steps or {})
        object.__setattr__(self, "duplicate", duplicate)
        object.__setattr__(self, "published", published)


def submit_workflow(
    workflow: Workflow,
    *,
    producer: Producer | None = None,
    session: Session | None = None,
    submitted_by: str | None = None,
    schedule_name: str | None = None,
    schedule_slot: datetime | None = None,
) -> WorkflowId:
    """Check and submit a workflow; returns its id once every step is committed.

    ``InvalidWorkflow`` (naming the step) and nothing created when it does not pass its checks.
    ``schedule_name``/``schedule_slot``: a schedule's firing, unique per slot.
    """
    producer = producer or default_producer()
    plan = workflow.plan(producer.registry)
    options = submission.Options(submitted_by=submitted_by)
    submission.check_texts(options, None)
    if (schedule_name is None) != (schedule_slot is None):
        raise InvalidWorkflow("a schedule firing needs both its schedule name and its slot")
    workflow_id = uuid.uuid4()
    rows = [_row(producer.settings, workflow_id, step) for step in plan.steps]
    ids = {step.name: row.id for step, row in zip(plan.steps, rows, strict=True)}
    edges = [
        ledger.Edge(row.id, ids[parent.step], position, parent.when)
        for row, step in zip(rows, plan.steps, strict=True)
        for position, parent in enumerate(step.parents)
    ]
    header = ledger.NewWorkflow(workflow_id, plan.name, len(rows), submitted_by, schedule_name, schedule_slot)
    if session is not None:
        conn = session.connection()
        created = _insert(producer, conn, plan, header, rows, edges, admit=False)
        if created is None:
            return _existing(conn, header)
        producer.publish_after_commit(session, created)
        return WorkflowId(workflow_id, steps=ids)
    with db.transaction(producer.settings) as conn:
        created = _insert(producer, conn, plan, header, rows, edges, admit=True)
        if created is None:
            return _existing(conn, header)
    sent = producer.send(created)
    return WorkflowId(workflow_id, steps=ids, published=sent == len(created))


def check_workflow(workflow: Workflow, registry: Registry, settings: Settings) -> dict[str, Any]:
    """Check a workflow as ``submit_workflow`` does, writing nothing; ``InvalidWorkflow`` naming
    the step. Returns its spec as data (``Workflow.to_spec``) with each step's payload in the
    form the ledger would store: what a schedule that fires the workflow saves."""
    plan = workflow.plan(registry)
    payloads = {step.name: _row(settings, uuid.uuid4(), step).payload for step in plan.steps}
    spec = workflow.to_spec()
    for step in spec["steps"]:
        step["payload"] = payloads[step["name"]]
    return spec


def _existing(conn: Connection, header: ledger.NewWorkflow) -> WorkflowId:
    assert header.schedule_name is not None
    assert header.schedule_slot is not None
    found = ledger.workflow_for_slot(conn, header.schedule_name, header.schedule_slot)
    assert found is not None, "the slot's workflow is committed (its insert conflicted)"
    return WorkflowId(found, duplicate=True)


def _insert(
    producer: Producer,
    conn: Connection,
    plan: Plan,
    header: ledger.NewWorkflow,
    rows: list[ledger.NewJob],
    edges: list[ledger.Edge],
    *,
    admit: bool,
) -> list[ledger.Published] | None:
    """Write the workflow; returns its first steps to publish after the commit (``None``: its
    schedule's slot fired it already)."""
    if not ledger.open_workflow(conn, header):
        return None
    limited = {
        (step.kind.name, row.queue): producer.limited(conn, step.kind, row.queue)
        for step, row in zip(plan.steps, rows, strict=True)
    }
    for row in rows:
        if limited[(row.kind, row.queue)]:
            row.limited = True
            row.state = "held"
            row.published_at = None
    ledger.copy_rows(conn, rows, steps=True)
    ledger.link(conn, edges)
    roots = [row for row in rows if row.pending == 0]
    first = [
        ledger.Published(row.id, row.kind, row.queue, row.priority, row.payload, row.payload_json)
        for row in roots
        if not row.limited
    ]
    held = [row.id for row in roots if row.limited]
    if held:  # first steps under a limit: admitted now if there is room (else by the leader)
        slots = ledger.hold(conn, held)
        first += ledger.admit_jobs(conn, held, slots) if admit else []
    return first


def _row(settings: Settings, workflow_id: uuid.UUID, step: PlannedStep) -> ledger.NewJob:
    """The job of one step: checked as a submission is (a step with inputs: its payload as
    given, validated in full when released)."""
    options = submission.Options(queue=step.queue, priority=step.priority, max_attempts=step.max_attempts)
    try:
        submission.check_texts(options, None)
        row = submission.new_job(settings, step.kind, step.payload, options, None, partial=bool(step.inputs))
    except BadInput as error:
        raise InvalidWorkflow(f"step {step.name!r}: {error.message}") from None
    row.workflow_id = workflow_id
    row.step = step.name
    row.pending = len(step.parents)
    row.inputs = step.inputs or None
    if step.parents:
        row.state = "held"
        row.published_at = None
    return row
