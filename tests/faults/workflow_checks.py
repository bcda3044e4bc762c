"""The checker's workflow promises (``tests.faults.checker`` runs them after every scenario).

Read from the ledger for the workflow steps created since the scenario began:

- every dependency of a finished parent is counted (``job_deps.resolved`` is the parent's
  terminal state): a parent's end that no release counted would leave its child waiting for
  nothing;
- a ``held`` step waits for exactly its uncounted parents (``pending``), and a finished step
  waits for none;
- a step ran (its first attempt started) only after every parent finished, and only if every
  parent it needs to succeed succeeded;
- a step of the test kinds that records an effect (``test.step``/``test.sum`` with a ``key``)
  has exactly one effect, written by the attempt that succeeded, when it succeeded, and none
  otherwise: an attempt killed or cut off from PostgreSQL mid-body rolls its effect back, and
  no step runs its body to success twice.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobs.schema import TERMINAL_STATES, job_attempts, job_deps, jobs

__all__ = ["STEP_EFFECT_KINDS", "workflow_problems"]

#: Step kinds that write one row in ``test_effects`` when the payload has a ``key`` (its attempt
#: recorded with it), in the job's transaction.
STEP_EFFECT_KINDS = frozenset({"test.step", "test.sum"})

_EFFECTS = sa.table("test_effects", sa.column("key"), sa.column("job_id"), sa.column("attempt"))


def workflow_problems(conn: sa.Connection, since: datetime | None) -> list[str]:
    """Every broken workflow promise among the steps created since ``since`` (all when ``None``)."""
    recent = jobs.c.created_at >= since if since is not None else sa.true()
    steps = {
        row.id: row
        for row in conn.execute(
            sa.select(
                jobs.c.id,
                jobs.c.kind,
                jobs.c.step,
                jobs.c.state,
                jobs.c.pending,
                jobs.c.attempt,
                jobs.c.payload,
                jobs.c.finished_at,
            ).where(recent, jobs.c.workflow_id.is_not(None))
        ).all()
    }
    if not steps:
        return []
    ids = sa.bindparam(None, list(steps), type_=sa.ARRAY(sa.Uuid))
    parent = jobs.alias("parent")
    edges = conn.execute(
        sa.select(
            job_deps.c.child_id,
            job_deps.c.policy,
            job_deps.c.resolved,
            parent.c.step,
            parent.c.state,
            parent.c.finished_at,
        )
        .join(parent, parent.c.id == job_deps.c.parent_id)
        .where(job_deps.c.child_id == sa.any_(ids))
    ).all()
    first_start = dict(
        conn.execute(
            sa.select(job_attempts.c.job_id, sa.func.min(job_attempts.c.started_at))
            .where(job_attempts.c.job_id == sa.any_(ids))
            .group_by(job_attempts.c.job_id)
        ).all()
    )
    effects: dict[uuid.UUID, list[int]] = {}
    for job_id, attempt in conn.execute(
        sa.select(_EFFECTS.c.job_id, _EFFECTS.c.attempt).where(_EFFECTS.c.job_id == sa.any_(ids))
    ):
        effects.setdefault(job_id, []).append(attempt)
    problems: list[str] = []
    uncounted: Counter[uuid.UUID] = Counter()
    for edge in edges:
        child = steps[edge.child_id]
        name = f"step {child.step!r} ({child.id}, {child.state})"
        if edge.resolved is None:
            uncounted[child.id] += 1
            if edge.state in TERMINAL_STATES:
                problems.append(f"{name}: its parent {edge.step!r} is {edge.state}, but was never counted")
        elif edge.resolved != edge.state:
            problems.append(f"{name}: parent {edge.step!r} counted as {edge.resolved}, but is {edge.state}")
        started = first_start.get(child.id)
        if started is not None and (edge.finished_at is None or started < edge.finished_at):
            problems.append(f"{name}: started at {started} before its parent {edge.step!r} finished")
        if started is not None and edge.policy == "succeeded" and edge.state != "succeeded":
            problems.append(f"{name}: ran though its parent {edge.step!r}, which it needs, is {edge.state}")
    for step in steps.values():
        problems += _step_problems(step, uncounted[step.id], effects.get(step.id, []))
    return problems


def _step_problems(step: Any, uncounted: int, effects: list[int]) -> list[str]:
    name = f"step {step.step!r} ({step.id}, {step.state})"
    found = []
    if step.state == "held" and step.pending != uncounted:
        found.append(f"{name}: waits for {step.pending} parent(s), {uncounted} not yet counted")
    if step.state in TERMINAL_STATES and step.pending:
        found.append(f"{name}: finished, yet still waits for {step.pending} parent(s)")
    key = step.payload.get("key") if isinstance(step.payload, dict) else None
    if step.kind in STEP_EFFECT_KINDS and key is not None:
        expected = [step.attempt] if step.state == "succeeded" else []
        if sorted(effects) != expected:
            found.append(
                f"{name}: effects of attempts {sorted(effects)}, expected {expected} (attempt {step.attempt})"
            )
    return found
