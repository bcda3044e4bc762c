"""The fault checker's workflow promises (``tests.faults.workflow_checks``) against the real ledger:
silent on a workflow that ran as it should, and naming each broken promise when the ledger is
made to show one (a second effect, a killed attempt's effect kept, a parent's end never
counted, a step started before its parent finished or run though its parent failed)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db, ledger
from jobs.producer import Producer
from jobs.schema import job_attempts, job_deps, jobs
from jobs.workflows import Workflow, WorkflowId, submit_workflow
from tests.faults.workflow_checks import workflow_problems

pytestmark = pytest.mark.integration


def diamond(producer: Producer) -> WorkflowId:
    flow = Workflow("checked")
    flow.step("a", "test.step", {"value": 1, "key": "k-a"})
    flow.step("b", "test.step", {"value": 2, "key": "k-b"}, after=["a"])
    flow.step("c", "test.step", {"value": 3, "key": "k-c"}, after=["a"])
    flow.step("d", "test.sum", {"key": "k-d"}, after=["b", "c"], inputs={"numbers": ["b.value", "c.value"]})
    return submit_workflow(flow, producer=producer)


def run(settings: Any, job_id: uuid.UUID, *, fail: bool = False, effect: bool = True) -> None:
    """One attempt as the worker records it: claim, the body's effect, then its end and release."""
    with db.transaction(settings) as conn:
        claimed = ledger.claim(conn, job_id, worker="w", lease=60)
        assert claimed is not None
        if effect and not fail:
            write_effect(conn, job_id, claimed.attempt)
        if fail:
            ledger.fail(conn, job_id, claimed.attempt, {"type": "Boom", "message": "boom"})
        else:
            ledger.succeed(conn, job_id, claimed.attempt, {"value": 1})
        ledger.release(conn, [job_id])


def write_effect(conn: sa.Connection, job_id: uuid.UUID, attempt: int) -> None:
    conn.execute(
        sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES ('k', :j, :a)"),
        {"j": job_id, "a": attempt},
    )


def problems(settings: Any) -> list[str]:
    with db.transaction(settings) as conn:
        return workflow_problems(conn, None)


def test_a_workflow_that_ran_as_it_should_breaks_no_promise(producer: Producer):
    wid = diamond(producer)
    settings = producer.settings
    run(settings, wid.steps["a"])
    assert problems(settings) == []  # b and c queued, d held for both: all as it should be
    for name in "bcd":
        run(settings, wid.steps[name])
    assert problems(settings) == []


def test_a_second_effect_or_a_kept_effect_of_another_attempt_is_reported(producer: Producer):
    wid = diamond(producer)
    settings = producer.settings
    for name in "abcd":
        run(settings, wid.steps[name])
    with db.transaction(settings) as conn:
        write_effect(conn, wid.steps["b"], 1)  # b's body ran to success twice
        write_effect(conn, wid.steps["c"], 2)  # an effect of an attempt that never succeeded
        conn.execute(sa.delete(sa.table("test_effects")).where(sa.column("job_id") == wid.steps["d"]))
    found = problems(settings)
    assert len(found) == 3, found
    assert any("'b'" in line and "effects of attempts [1, 1], expected [1]" in line for line in found)
    assert any("'c'" in line and "effects of attempts [1, 2], expected [1]" in line for line in found)
    assert any("'d'" in line and "effects of attempts [], expected [1]" in line for line in found)


def test_a_parent_end_never_counted_leaves_a_step_waiting_for_nothing(producer: Producer):
    wid = diamond(producer)
    settings = producer.settings
    run(settings, wid.steps["a"])
    run(settings, wid.steps["b"])
    with db.transaction(settings) as conn:  # b's end as if its release never ran
        conn.execute(
            sa.update(job_deps)
            .where(job_deps.c.child_id == wid.steps["d"], job_deps.c.parent_id == wid.steps["b"])
            .values(resolved=None)
        )
    found = problems(settings)
    assert found == [
        f"step 'd' ({wid.steps['d']}, held): its parent 'b' is succeeded, but was never counted",
        f"step 'd' ({wid.steps['d']}, held): waits for 1 parent(s), 2 not yet counted",
    ]


def test_a_step_started_before_its_parent_finished_or_despite_its_failure_is_reported(
    producer: Producer,
):
    wid = diamond(producer)
    settings = producer.settings
    for name in "abcd":
        run(settings, wid.steps[name])
    with db.transaction(settings) as conn:
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == wid.steps["b"])
            .values(finished_at=sa.func.now() + sa.text("interval '1 hour'"))
        )
        conn.execute(sa.update(jobs).where(jobs.c.id == wid.steps["c"]).values(state="failed", result=None))
        conn.execute(sa.delete(sa.table("test_effects")).where(sa.column("job_id") == wid.steps["c"]))
        conn.execute(
            sa.update(job_deps).where(job_deps.c.parent_id == wid.steps["c"]).values(resolved="failed")
        )
        started = conn.execute(
            sa.select(job_attempts.c.started_at).where(job_attempts.c.job_id == wid.steps["d"])
        ).scalar_one()
    d = f"step 'd' ({wid.steps['d']}, succeeded)"
    assert sorted(problems(settings)) == [
        f"{d}: ran though its parent 'c', which it needs, is failed",
        f"{d}: started at {started} before its parent 'b' finished",
    ]
