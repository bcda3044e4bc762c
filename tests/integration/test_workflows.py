"""Workflows against the real ledger: held steps, release in the parent's commit, inputs, failure
policies, cancel and retry of a whole workflow (docs/workflows.md). The attempts run without a
worker (claim, then finish and release in one transaction, as the worker does)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db, ledger, workflow_control, workflow_views
from jobs.errors import InvalidTransition, InvalidWorkflow
from jobs.limits import Limit
from jobs.producer import Producer
from jobs.schema import jobs
from jobs.workflows import Step, Workflow, chain, chord, group, submit_workflow
from tests.support.fixtures import queued_messages
from tests.support.limits import set_limit

pytestmark = pytest.mark.integration


def state_of(settings, job_id) -> str:
    with db.transaction(settings) as conn:
        state: str = conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
    return state


def row_of(settings, job_id) -> Any:
    with db.transaction(settings) as conn:
        return conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()


def run(settings, job_id, *, result: Any = None, fail: bool = False) -> list[ledger.Published]:
    """One attempt as a worker records it: claim, then succeed (or fail for good) and release."""
    with db.transaction(settings) as conn:
        claimed = ledger.claim(conn, job_id, worker="w", lease=60)
        assert claimed is not None, f"job {job_id} is not runnable ({state_of(settings, job_id)})"
        assert claimed.workflow
        if fail:
            ledger.fail(conn, job_id, claimed.attempt, {"type": "Boom", "message": "boom"})
        else:
            ledger.succeed(conn, job_id, claimed.attempt, result if result is not None else {"value": 1})
        return ledger.release(conn, [job_id])


def diamond(producer: Producer, *, when: str = "succeeded") -> Any:
    flow = Workflow("diamond")
    flow.step("a", "test.step", {"value": 1})
    flow.step("b", "test.step", {"value": 2}, after=["a"])
    flow.step("c", "test.step", {"value": 3}, after=["a"])
    flow.step("d", "test.sum", after=["b", "c"], inputs={"numbers": ["b.value", "c.value"]}, when=when)  # type: ignore[arg-type]
    return submit_workflow(flow, producer=producer)


def test_a_diamond_releases_each_step_when_its_parents_succeeded(producer: Producer):
    settings = producer.settings
    wid = diamond(producer)
    a, b, c, d = (wid.steps[name] for name in "abcd")
    assert [state_of(settings, i) for i in (a, b, c, d)] == ["queued", "held", "held", "held"]
    released = run(settings, a, result={"value": 1})
    assert sorted(item.id for item in released) == sorted([b, c])
    assert run(settings, b, result={"value": 20}) == []  # d still waits for c
    assert state_of(settings, d) == "held"
    released = run(settings, c, result={"value": 30})
    assert [item.id for item in released] == [d]
    assert released[0].payload == {"numbers": [20, 30], "key": None}  # resolved and validated
    assert row_of(settings, d).pending == 0
    run(settings, d, result={"value": 50})
    view = workflow_views.status(settings, wid)
    assert view.summary.state == "succeeded"
    assert [step.name for step in view.steps] == ["a", "b", "c", "d"]
    assert view.steps[3].after == (("b", "succeeded"), ("c", "succeeded"))


def test_a_failed_parent_cancels_what_needs_it_and_the_workflow_fails(producer: Producer):
    settings = producer.settings
    wid = diamond(producer)
    a, b, c, d = (wid.steps[name] for name in "abcd")
    run(settings, a)
    assert run(settings, b, fail=True) == []
    assert state_of(settings, d) == "cancelled"
    error = row_of(settings, d).error
    assert error["type"] == "ParentFailed"
    assert "'b'" in error["message"]
    run(settings, c)  # its end is counted, and d stays cancelled
    assert state_of(settings, d) == "cancelled"
    assert workflow_views.status(settings, wid).summary.state == "failed"


def test_a_step_that_runs_whatever_the_outcome_runs_after_a_failure(producer: Producer):
    settings = producer.settings
    flow = Workflow("cleanup")
    flow.step("a", "test.step", {"value": 1})
    flow.step("b", "test.step", {"value": 2}, after=["a"])
    flow.step("notify", "test.step", after=["a", "b"], when="finished", inputs={"value": "*"})
    wid = submit_workflow(flow, producer=producer)
    run(settings, wid.steps["a"], fail=True)
    assert state_of(settings, wid.steps["b"]) == "cancelled"
    notify = wid.steps["notify"]
    assert state_of(settings, notify) == "queued"
    assert row_of(settings, notify).payload["value"] == [None, None]  # no results from either


def test_inputs_that_do_not_fit_the_kind_fail_the_step_naming_field_and_parent(producer: Producer):
    settings = producer.settings
    flow = Workflow("typed")
    flow.step("a", "test.step", {"value": "x"})
    flow.step("sum", "test.sum", after=["a"], inputs={"numbers": "^.value"})
    flow.step("after-sum", "test.step", after=["sum"])
    wid = submit_workflow(flow, producer=producer)
    run(settings, wid.steps["a"], result={"value": "not a list"})
    row = row_of(settings, wid.steps["sum"])
    assert row.state == "failed"
    assert row.error["type"] == "InvalidInput"
    assert "'numbers'" in row.error["message"]
    assert "^.value" in row.error["message"]
    assert state_of(settings, wid.steps["after-sum"]) == "cancelled"


def test_a_fan_in_of_many_is_released_once_with_every_result_in_order(producer: Producer):
    settings = producer.settings
    flow = Workflow(
        "fan",
        chord(
            [Step("test.step", {"value": n}) for n in range(50)],
            Step("test.sum", inputs={"numbers": "*.value"}),
        ),
    )
    wid = submit_workflow(flow, producer=producer)
    names = flow.names
    fan_in = wid.steps[names[-1]]
    released: list[ledger.Published] = []
    for n, name in enumerate(names[:-1]):
        released += run(settings, wid.steps[name], result={"value": n})
    assert [item.id for item in released] == [fan_in]
    assert released[0].payload["numbers"] == list(range(50))


def test_a_fan_out_releases_every_held_child_and_counts_the_edge_of_one_cancelled_meanwhile(
    producer: Producer,
):
    settings = producer.settings
    flow = Workflow("fan-out")
    flow.step("root", "test.step", {"value": 1})
    for n in range(300):
        flow.step(f"child-{n}", "test.step", {"value": n}, after=["root"])
    wid = submit_workflow(flow, producer=producer)
    gone = wid.steps["child-7"]
    with db.transaction(settings) as conn:
        assert ledger.cancel(conn, gone) == "held"
    released = run(settings, wid.steps["root"])
    children = {wid.steps[f"child-{n}"] for n in range(300)} - {gone}
    assert sorted(item.id for item in released) == sorted(children)
    assert state_of(settings, gone) == "cancelled"
    assert row_of(settings, gone).pending == 1  # a child no longer held is not counted down
    with db.transaction(settings) as conn:
        unresolved = conn.execute(
            sa.text("SELECT count(*) FROM job_deps WHERE parent_id = :p AND resolved IS NULL"),
            {"p": wid.steps["root"]},
        ).scalar_one()
    assert unresolved == 0  # every edge counted once, the cancelled child's too


def test_the_workers_success_releases_children_and_frees_the_slot_of_a_step_under_a_limit(
    producer: Producer, broker
):
    from workers import outcomes

    settings = producer.settings
    set_limit(settings, Limit("one-sum", concurrency=1, kind="test.sum"))
    flow = Workflow("worker-path")
    flow.step("free", "test.step", {"value": 1})
    flow.step("after-free", "test.step", after=["free"])
    flow.step("capped", "test.sum", {"numbers": [1]})
    flow.step("capped-too", "test.sum", {"numbers": [2]})
    flow.step("after-capped", "test.step", after=["capped"])
    wid = submit_workflow(flow, producer=producer)
    assert state_of(settings, wid.steps["capped-too"]) == "held"  # waits for the cap
    assert queued_messages(broker) == 2
    for name in ("free", "capped"):
        with db.transaction(settings) as conn:
            claimed = ledger.claim(conn, wid.steps[name], worker="w", lease=60)
        assert claimed is not None
        assert claimed.workflow
        assert claimed.limited == (name == "capped")
        assert outcomes.record_success(settings, None, claimed, {"value": 1})
    for name in ("after-free", "capped-too", "after-capped"):
        assert state_of(settings, wid.steps[name]) == "queued", name
    assert queued_messages(broker) == 5  # each published after its parent's commit


def _finish_together(settings, ids: list[uuid.UUID]) -> list[list[ledger.Published]]:
    """Claim these jobs, then record their successes at the same moment in two transactions."""
    with db.transaction(settings) as conn:
        claimed = [ledger.claim(conn, job_id, worker="w", lease=60) for job_id in ids]
    barrier = threading.Barrier(len(ids))
    released: list[list[ledger.Published]] = []
    errors: list[BaseException] = []

    def finish(job: ledger.Claimed) -> None:
        try:
            with db.transaction(settings) as conn:
                ledger.succeed(conn, job.id, job.attempt, {"value": str(job.id)})
                barrier.wait()
                released.append(ledger.release(conn, [job.id]))
        except BaseException as error:  # a deadlock, say: the test fails with it
            errors.append(error)

    threads = [threading.Thread(target=finish, args=(job,)) for job in claimed if job is not None]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    return released


def test_two_last_parents_finishing_at_once_release_the_child_exactly_once(producer: Producer):
    settings = producer.settings
    for _ in range(200):
        flow = Workflow("race")
        flow.step("x", "test.step")
        flow.step("y", "test.step")
        flow.step("z", "test.step", after=["x", "y"])
        wid = submit_workflow(flow, producer=producer)
        released = _finish_together(settings, [wid.steps["x"], wid.steps["y"]])
        assert sorted(len(items) for items in released) == [0, 1]
        assert state_of(settings, wid.steps["z"]) == "queued"


def test_a_finish_locks_the_children_it_counts_in_one_order(producer: Producer):
    """By id: two parents that share children (neighbours in a layered workflow) finishing at
    once deadlocked when each locked them in the order of its own count."""
    settings = producer.settings
    flow = Workflow("ordered")
    flow.step("x", "test.step")
    for n in range(40):
        flow.step(f"c{n}", "test.step", after=["x"])
    wid = submit_workflow(flow, producer=producer)
    children = sorted(wid.steps[f"c{n}"] for n in range(40))
    middle = children[20]
    with db.transaction(settings) as conn:
        claimed = ledger.claim(conn, wid.steps["x"], worker="w", lease=60)
    assert claimed is not None
    released: list[ledger.Published] = []
    with db.transaction(settings) as holder:  # holds one child's row while x finishes
        holder.execute(sa.select(jobs.c.id).where(jobs.c.id == middle).with_for_update())

        def finish() -> None:
            with db.transaction(settings) as conn:
                ledger.succeed(conn, claimed.id, claimed.attempt, {"value": 1})
                released.extend(ledger.release(conn, [claimed.id]))

        thread = threading.Thread(target=finish)
        thread.start()
        _await_a_lock_wait(settings)
        with db.transaction(settings) as conn:
            free = conn.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.id.in_(children))
                .with_for_update(skip_locked=True)
                .order_by(jobs.c.id)
            ).scalars()
            assert list(free) == children[21:]  # those before it locked, none after
    thread.join(30)
    assert sorted(item.id for item in released) == children


def _await_a_lock_wait(settings, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.transaction(settings) as conn:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError(f"no session waited for a lock within {timeout:g}s")


def test_cancel_stops_every_unfinished_step_and_retry_reruns_only_what_failed(producer: Producer):
    settings = producer.settings
    wid = diamond(producer)
    a, b, c, d = (wid.steps[name] for name in "abcd")
    run(settings, a)
    run(settings, b, result={"value": 5})
    cancelled = workflow_control.cancel(settings, None, wid)  # type: ignore[arg-type]  # none running
    assert sorted(step.id for step in cancelled) == sorted([c, d])
    assert workflow_views.status(settings, wid).summary.state == "cancelled"
    retried = workflow_control.retry(settings, wid)
    assert set(retried.steps) == {"c", "d"}
    view = workflow_views.status(settings, wid)
    assert view.summary.state == "running"
    states = {step.name: step.state for step in view.steps}
    assert states == {"a": "succeeded", "b": "succeeded", "c": "queued", "d": "held"}
    released = run(settings, retried.steps["c"], result={"value": 7})
    assert [item.id for item in released] == [retried.steps["d"]]
    assert released[0].payload["numbers"] == [5, 7]  # b's old result, c's new one
    with pytest.raises(InvalidTransition):
        workflow_control.retry(settings, wid)  # still running


def test_bad_specs_are_refused_naming_the_step_and_create_nothing(producer: Producer):
    settings = producer.settings
    with db.transaction(settings) as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()
    cases = {
        "comes after 'nope'": [{"name": "a", "kind": "test.step", "after": ["nope"]}],
        "cycle": [
            {"name": "a", "kind": "test.step", "after": ["b"]},
            {"name": "b", "kind": "test.step", "after": ["a"]},
        ],
        "unknown job kind": [{"name": "a", "kind": "test.stpe"}],
        "invalid payload": [{"name": "a", "kind": "test.step", "payload": {"sleep": "long"}}],
        "two steps with that name": [{"name": "a", "kind": "test.step"}, {"name": "a", "kind": "test.step"}],
    }
    for expected, steps in cases.items():
        with pytest.raises(InvalidWorkflow) as caught:
            submit_workflow(Workflow.from_spec({"name": "bad", "steps": steps}), producer=producer)
        assert expected in caught.value.message
        assert "step 'a'" in caught.value.message or "step 'b'" in caught.value.message
    with db.transaction(settings) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == before


def test_nested_composition_places_each_step_after_the_right_ones(producer: Producer):
    flow = Workflow(
        "nested",
        chain(
            Step("test.step", name="start"),
            group(
                Step("test.step", name="g1"),
                chain(Step("test.step", name="g2a"), Step("test.step", name="g2b")),
            ),
            Step("test.step", name="end"),
        ),
    )
    plan = flow.plan(producer.registry)
    after = {step.name: [parent.step for parent in step.parents] for step in plan.steps}
    assert after == {"start": [], "g1": ["start"], "g2a": ["start"], "g2b": ["g2a"], "end": ["g1", "g2b"]}
    assert Counter(step.name for step in plan.steps)["end"] == 1
    assert isinstance(uuid.UUID(str(submit_workflow(flow, producer=producer))), uuid.UUID)
