"""Workflows on the ledger's other paths: steps under a limit, submits in the caller's transaction,
the leader's safety net, pruning, and Celery's canvas (docs/workflows.md)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from celery import chain, chord
from celery import signature as celery_signature
from sqlalchemy.orm import Session

from jobs import db, ledger, workflow_views
from jobs.limits import Limit
from jobs.producer import Producer
from jobs.schema import jobs, limit_slots, workflows
from jobs.workflows import Step, Workflow, submit_canvas, submit_workflow
from jobs.workflows import group as wf_group
from tests.integration.test_workflows import run, state_of
from tests.support.limits import remove_limits, set_limit

pytestmark = pytest.mark.integration


def signature(*args: Any, **kwargs: Any) -> Any:
    """Celery's ``signature`` (its stubs do not know the options a workflow reads, like ``step``)."""
    return celery_signature(*args, **kwargs)


def count(settings, table) -> int:
    with db.transaction(settings) as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_steps_under_a_limit_wait_for_their_slots_once_released(producer: Producer):
    settings = producer.settings
    set_limit(settings, Limit("steps", concurrency=1, kind="test.sum"))
    try:
        flow = Workflow("capped")
        flow.step("a", "test.step")
        for n in range(3):
            flow.step(f"s{n}", "test.sum", {"numbers": [n]}, after=["a"])
        wid = submit_workflow(flow, producer=producer)
        released = run(settings, wid.steps["a"])
        assert len(released) == 1  # one admitted now, the others held for their slot
        states = sorted(state_of(settings, wid.steps[f"s{n}"]) for n in range(3))
        assert states == ["held", "held", "queued"]
        (first,) = released
        admitted = run(settings, first.id)  # its finish admits the next, in its transaction
        assert len(admitted) == 1
        assert count(settings, limit_slots) == 2  # one admitted, one waiting
    finally:
        remove_limits(settings, "steps")


def test_a_workflow_submitted_in_the_callers_transaction_exists_only_if_it_commits(producer: Producer):
    settings = producer.settings
    flow = Workflow("in-session", wf_group(Step("test.step", name="a"), Step("test.step", name="b")))
    before = count(settings, jobs)
    with Session(db.engine(settings)) as session:
        submit_workflow(flow, producer=producer, session=session)
        session.rollback()
    assert count(settings, jobs) == before
    assert count(settings, workflows) == 0
    with Session(db.engine(settings)) as session:
        wid = submit_workflow(
            Workflow("in-session", Step("test.step", name="a")), producer=producer, session=session
        )
        session.commit()
    assert state_of(settings, wid.steps["a"]) == "queued"
    with db.transaction(settings) as conn:
        published = conn.execute(
            sa.select(jobs.c.published_at).where(jobs.c.id == wid.steps["a"])
        ).scalar_one()
    assert published is not None


def test_the_leaders_safety_net_counts_an_end_no_finish_counted(producer: Producer):
    settings = producer.settings
    flow = Workflow("net")
    flow.step("a", "test.step")
    flow.step("b", "test.step", after=["a"])
    wid = submit_workflow(flow, producer=producer)
    with db.transaction(settings) as conn:  # a finish that died before its release
        claimed = ledger.claim(conn, wid.steps["a"], worker="w", lease=60)
        assert claimed is not None
        ledger.succeed(conn, claimed.id, claimed.attempt, {"value": 1})
    assert state_of(settings, wid.steps["b"]) == "held"
    with db.transaction(settings) as conn:
        released = ledger.settle_dependents(conn)
    assert [item.id for item in released] == [wid.steps["b"]]
    with db.transaction(settings) as conn:
        assert ledger.settle_dependents(conn) == []  # counted once


def test_workflows_are_pruned_whole_once_every_step_is_past_retention(producer: Producer):
    settings = producer.settings
    flow = Workflow("old")
    flow.step("a", "test.step")
    flow.step("b", "test.step", after=["a"])
    wid = submit_workflow(flow, producer=producer)
    run(settings, wid.steps["a"])
    with db.transaction(settings) as conn:
        assert ledger.prune(conn, states=["succeeded"], older_than=0) == 0  # steps never go alone
        assert ledger.prune_workflows(conn, older_than=0, failed_older_than=0) == 0  # b not finished
    run(settings, wid.steps["b"])
    with db.transaction(settings) as conn:
        assert ledger.prune_workflows(conn, older_than=3600, failed_older_than=3600) == 0
        assert ledger.prune_workflows(conn, older_than=0, failed_older_than=0) == 1
    assert count(settings, jobs) == 0


def canvas_with_a_chain_inside_a_chord(*, fail: bool):
    """celery/celery#6220: an error in a chain inside a chord's header must not be skipped."""
    return chain(
        signature("test.step", kwargs={"value": 1}).set(step="start"),
        chord(
            [
                signature("test.step", kwargs={"value": 2}).set(step="h1"),
                chain(
                    signature("test.step", kwargs={"value": 3, "fail": fail}).set(step="h2a"),
                    signature("test.step", kwargs={"value": 4}).set(step="h2b", inputs={"value": "^.value"}),
                ),
            ],
            signature("test.sum").set(step="body", inputs={"numbers": "*.value"}),
        ),
    )


def drain(settings, wid) -> None:
    """Run every runnable step of the workflow as workers would, until none is left."""
    while True:
        view = workflow_views.status(settings, wid)
        queued = [step for step in view.steps if step.state == "queued"]
        if not queued:
            return
        for step in queued:
            row = _row(settings, step.job_id)
            fail = bool(row.payload.get("fail"))
            result = {"value": row.payload.get("value")} if step.kind == "test.step" else None
            if step.kind == "test.sum":
                result = {"value": sum(row.payload["numbers"])}
            run(settings, step.job_id, result=result, fail=fail)


def _row(settings, job_id):
    with db.transaction(settings) as conn:
        return conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()


def test_a_chain_inside_a_chord_compiles_and_its_error_fails_the_workflow(producer: Producer):
    settings = producer.settings
    wid = submit_canvas(canvas_with_a_chain_inside_a_chord(fail=True), name="6220", producer=producer)
    drain(settings, wid)
    view = workflow_views.status(settings, wid)
    states = {step.name: step.state for step in view.steps}
    assert states == {
        "start": "succeeded",
        "h1": "succeeded",
        "h2a": "failed",
        "h2b": "cancelled",
        "body": "cancelled",
    }
    assert view.summary.state == "failed"


def test_a_chain_inside_a_chord_passes_its_results_to_the_body(producer: Producer):
    settings = producer.settings
    wid = submit_canvas(canvas_with_a_chain_inside_a_chord(fail=False), name="6220-ok", producer=producer)
    drain(settings, wid)
    view = workflow_views.status(settings, wid)
    assert view.summary.state == "succeeded"
    body = next(step for step in view.steps if step.name == "body")
    assert _row(settings, body.job_id).payload["numbers"] == [2, 3]  # h1's value, then h2b's (h2a's)
