"""The pure parts of the workflow views: the graph's rows (depth, what a held step waits for,
runs of siblings summarised, folds and cuts past ``MAX_ROWS``), and what ``jobs explain`` says
of a workflow's step."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobs import explain, workflow_views
from jobs.cli import workflow as workflow_cli
from jobs.cli import workflow_tables
from jobs.parentage import Parent, StepOf
from jobs.workflow_views import StepView, WorkflowSummary, WorkflowView
from tests.unit.test_cockpit_views import a_job, facts

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)


def step(name: str, state: str = "succeeded", after: tuple[str, ...] = (), **fields: Any) -> StepView:
    ran = state not in ("held", "queued")
    given: dict[str, Any] = {
        "name": name,
        "job_id": uuid.uuid4(),
        "kind": "test.step",
        "queue": "default",
        "state": state,
        "after": tuple((parent, "succeeded") for parent in after),
        "attempt": 1 if ran else 0,
        "max_attempts": 3,
        "pending": len(after) if state == "held" else 0,
        "created_at": NOW,
        "started_at": NOW if ran else None,
        "finished_at": NOW + timedelta(seconds=2) if state in ("succeeded", "failed") else None,
        "error": "boom" if state == "failed" else None,
        "replaced": 0,
        **fields,
    }
    return StepView(**given)


def view(*steps: StepView) -> WorkflowView:
    counts: dict[str, int] = {}
    for each in steps:
        counts[each.state] = counts.get(each.state, 0) + 1
    summary = WorkflowSummary(
        uuid.uuid4(), "w", workflow_views.derive(counts), len(steps), counts, NOW, None, None, None
    )
    return WorkflowView(summary, list(steps))


def test_the_cli_offers_the_workflow_states_the_views_derive():
    assert workflow_cli.STATES == workflow_views.STATES


def test_a_diamond_is_drawn_by_depth_and_a_held_step_names_what_it_waits_for():
    rows, notes = workflow_tables.rows_of(
        view(
            step("a"),
            step("b", "running", ("a",)),
            step("c", "succeeded", ("a",)),
            step("d", "held", ("b", "c"), pending=1),
        ),
        everything=False,
        now=NOW + timedelta(seconds=5),
    )
    assert [(row.name, row.depth) for row in rows] == [("a", 0), ("b", 1), ("c", 1), ("d", 2)]
    assert rows[3].after == "b, c; waits for b"
    assert rows[1].took == "5.00s…"  # running: since it started
    assert rows[0].took == "2.00s"
    assert notes == []


def test_a_fan_out_is_one_row_counting_its_states_unless_every_step_is_asked_for():
    shards = [step(f"shard-{n}", "failed" if n in (7, 9) else "running", ("start",)) for n in range(1, 501)]
    drawn = view(step("start"), *shards, step("merge", "held", tuple(s.name for s in shards)))
    rows, notes = workflow_tables.rows_of(drawn, everything=False, now=NOW)
    assert [row.name for row in rows] == ["start", "shard-1 … shard-500 (500 steps)", "merge"]
    assert rows[1].counts == {"running": 498, "failed": 2}
    assert rows[1].error == "2 failed, first shard-7: boom"
    assert rows[2].after == "shard-1 … shard-500 (500); waits for 498"
    assert notes == ["500 sibling steps are summarised in runs; --all draws every step"]
    every, notes = workflow_tables.rows_of(drawn, everything=True, now=NOW)
    assert len(every) == 502
    assert notes == []


def test_a_few_siblings_are_drawn_one_by_one():
    few = [step(f"s{n}", after=("a",)) for n in range(workflow_tables.SIBLING_RUN)]
    rows, _ = workflow_tables.rows_of(view(step("a"), *few), everything=False, now=NOW)
    assert len(rows) == 1 + workflow_tables.SIBLING_RUN


def test_a_long_chain_folds_what_succeeded_and_cuts_the_rest():
    chain = [step("c0")]
    for n in range(1, 400):
        state = "succeeded" if n < 250 else ("running" if n == 250 else "held")
        chain.append(step(f"c{n}", state, (f"c{n - 1}",)))
    rows, notes = workflow_tables.rows_of(view(*chain), everything=False, now=NOW)
    assert rows[0].fold
    assert rows[0].name == "… 250 steps succeeded"
    assert rows[1].name == "c250"  # the running step is in sight
    assert len(rows) == workflow_tables.MAX_ROWS
    assert notes == ["… 51 more rows (51 steps) not drawn; --all draws every step"]


def step_of(*parents: Parent, replaced_by: uuid.UUID | None = None) -> StepOf:
    return StepOf(uuid.uuid4(), "nightly", "load", list(parents), replaced_by)


def test_a_held_step_names_the_parents_it_waits_for_with_their_states():
    found = explain.reasons(
        facts(
            a_job("held", pending=2),
            step=step_of(
                Parent("extract", uuid.uuid4(), "running", "succeeded", None),
                Parent("fetch", uuid.uuid4(), "succeeded", "succeeded", "succeeded"),
                Parent("clean", uuid.uuid4(), "queued", "finished", None),
            ),
        )
    )
    assert [reason.code for reason in found] == ["parents"]
    assert found[0].message == "waits for 2 of its 3 parent step(s): extract (running), clean (queued)"
    assert "jobs workflow status" in found[0].action


def test_a_held_step_whose_parents_ended_uncounted_waits_for_the_leader():
    ended = Parent("extract", uuid.uuid4(), "succeeded", "succeeded", None)
    found = explain.reasons(facts(a_job("held", pending=1), step=step_of(ended), leader=None))
    assert [reason.code for reason in found] == ["parents", "settling", "no_leader"]


def test_a_released_step_held_for_its_limits_is_explained_by_its_limits():
    done = Parent("extract", uuid.uuid4(), "succeeded", "succeeded", "succeeded")
    found = explain.reasons(facts(a_job("held", pending=0), step=step_of(done)))
    assert [reason.code for reason in found] == ["admitting"]


def test_a_failed_step_points_to_the_workflow_retry_and_a_replaced_one_to_its_successor():
    newer = uuid.uuid4()
    failed = a_job("failed", attempt=3, error={"type": "Fail", "message": "boom"})
    (reason,) = explain.reasons(facts(failed, step=step_of()))
    assert "jobs workflow retry" in reason.action
    found = explain.reasons(facts(failed, step=step_of(replaced_by=newer)))
    assert [reason.code for reason in found] == ["replaced", "finished"]
    assert str(newer) in found[0].message
