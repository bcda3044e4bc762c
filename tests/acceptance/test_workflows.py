"""Workflows with real workers: a diamond of ``http.post`` calls to a local server, a fan-out of
1,000 steps with one fan-in, and Celery canvases compiled with ``submit_canvas`` (a chain inside
a chord's header, celery/celery#6220), on a worker (prefork, 2 processes) and a leader.

What each test holds the platform to: a step starts only after the parents it needs succeeded,
exactly once (one attempt, one request, one effect), with their results in its payload; a
failure inside a chord's header cancels the body and fails the workflow.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Signature, chain, chord, signature

from jobs import db, workflow_views
from jobs.schema import job_attempts, jobs
from jobs.settings import Settings
from jobs.workflows import Step, Workflow, submit_canvas, submit_workflow
from jobs.workflows import chord as step_chord
from tests.support.fixtures import effects, queued_messages, wait_for_state

pytestmark = pytest.mark.acceptance

#: Bounds for a busy 2-core machine: generous, never waited out when things work.
WORKFLOW_TIMEOUT = 90.0
FAN_OUT = 1000
FAN_OUT_TIMEOUT = 360.0


def wait_for_workflow(
    settings: Settings, workflow_id: uuid.UUID, timeout: float
) -> workflow_views.WorkflowView:
    """Poll the workflow's derived state until it is no longer ``running``."""
    deadline = time.monotonic() + timeout
    while True:
        view = workflow_views.status(settings, workflow_id)
        if view.summary.state != "running":
            return view
        if time.monotonic() > deadline:
            states = {step.name: step.state for step in view.steps}
            raise AssertionError(f"workflow {workflow_id} still running after {timeout}s: {states}")
        time.sleep(0.2)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def broker_quiet(broker: redis.Redis, timeout: float = 30.0) -> None:
    """Nothing waits in the queues or in a worker's hands: no duplicate delivery is on its way."""
    wait_until(
        lambda: broker.hlen("unacked") == 0 and queued_messages(broker) == 0,
        timeout,
        "the broker's queues and unacknowledged messages to empty",
    )


def rows(settings: Settings, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    with db.transaction(settings) as conn:
        found = conn.execute(sa.select(jobs).where(jobs.c.id.in_(ids))).all()
    return {row.id: row for row in found}


def attempts_of(settings: Settings, job_id: uuid.UUID) -> list[Any]:
    with db.transaction(settings) as conn:
        return list(conn.execute(sa.select(job_attempts).where(job_attempts.c.job_id == job_id)).all())


def test_a_diamond_of_http_posts_runs_d_once_after_b_and_c_with_both_results(
    platform, clean, producer, hook, broker
):
    """A → B, C → D, each a POST to the local server. B's answer is held until C has succeeded:
    D must wait, held, for B; then D's request carries both B's and C's results."""
    hook.script.update(
        {
            "/a": [(200, "from a")],
            "/b": [(200, "from b")],
            "/c": [(201, "from c")],
            "/d": [(200, "both seen")],
        }
    )
    b_answers = hook.gate("/b")
    url = hook.url
    flow = Workflow("diamond-http")
    flow.step("a", "http.post", {"url": f"{url}/a", "body": {"step": "a"}})
    flow.step(
        "b",
        "http.post",
        {"url": f"{url}/b", "body": {"step": "b"}, "timeout": 120},  # outlasts the gate
        after=["a"],
        inputs={"body.after": "a.body"},
    )
    flow.step(
        "c",
        "http.post",
        {"url": f"{url}/c", "body": {"step": "c"}},
        after=["a"],
        inputs={"body.after": "a.body"},
    )
    both = {"body.b": "b", "body.c": "c"}  # D's body takes B's and C's results whole
    flow.step("d", "http.post", {"url": f"{url}/d", "body": {"step": "d"}}, after=["b", "c"], inputs=both)
    started = time.monotonic()
    wid = submit_workflow(flow, producer=producer)
    a, b, c, d = (wid.steps[name] for name in "abcd")

    assert wait_for_state(clean, c, timeout=WORKFLOW_TIMEOUT)["state"] == "succeeded"
    wait_until(lambda: hook.requests_to("/b"), WORKFLOW_TIMEOUT, "B's request to arrive")
    held = rows(clean, [b, d])
    assert held[b].state == "running"
    assert (held[d].state, held[d].pending) == ("held", 1)  # C counted; B not yet
    assert "/d" not in hook.paths()
    b_answers.set()

    view = wait_for_workflow(clean, wid, WORKFLOW_TIMEOUT)
    elapsed = time.monotonic() - started
    assert view.summary.state == "succeeded", {step.name: (step.state, step.error) for step in view.steps}
    broker_quiet(broker)
    paths = hook.paths()
    assert paths[0] == "/a"
    assert sorted(paths[1:3]) == ["/b", "/c"]
    assert paths[3:] == ["/d"], paths  # D once, last
    [(_, _, b_body)] = hook.requests_to("/b")
    assert b_body == {"step": "b", "after": "from a"}
    [(_, headers, d_body)] = hook.requests_to("/d")
    assert headers["Content-Type"] == "application/json"
    assert d_body == {
        "step": "d",
        "b": {"status": 200, "body": "from b"},
        "c": {"status": 201, "body": "from c"},
    }
    found = rows(clean, [a, b, c, d])
    assert found[d].result == {"status": 200, "body": "both seen"}
    assert found[d].started_at > max(found[b].finished_at, found[c].finished_at)
    assert found[b].started_at > found[a].finished_at
    assert [(row.attempt, row.outcome) for row in attempts_of(clean, d)] == [(1, "succeeded")]
    print(f"diamond of http.post: {elapsed:.2f}s from submit to succeeded (B held until C succeeded)")


def test_a_fan_out_of_1000_steps_runs_its_fan_in_once_after_all_of_them(platform, clean, producer, broker):
    parts = [Step("test.step", {"value": n, "key": "fan-out"}, name=f"part-{n}") for n in range(FAN_OUT)]
    fan_in = Step("test.sum", {"key": "fan-in"}, name="fan-in", inputs={"numbers": "*.value"})
    flow = Workflow("fan-out-1000", step_chord(parts, fan_in))
    started = time.monotonic()
    wid = submit_workflow(flow, producer=producer)
    submitted = time.monotonic() - started

    last = wait_for_state(clean, wid.steps["fan-in"], timeout=FAN_OUT_TIMEOUT)
    elapsed = time.monotonic() - started
    assert last["state"] == "succeeded", last["error"]
    assert last["result"] == {"value": sum(range(FAN_OUT)), "count": FAN_OUT}
    assert last["payload"]["numbers"] == list(range(FAN_OUT))  # every parent's result, in order
    part_ids = {wid.steps[f"part-{n}"] for n in range(FAN_OUT)}
    with db.transaction(clean) as conn:
        ends = conn.execute(
            sa.select(jobs.c.state, sa.func.count(), sa.func.max(jobs.c.finished_at))
            .where(jobs.c.id.in_(part_ids))
            .group_by(jobs.c.state)
        ).all()
    assert [(state, count) for state, count, _ in ends] == [("succeeded", FAN_OUT)]
    assert last["started_at"] > ends[0][2]  # after the last parent's end
    broker_quiet(broker)
    assert [(row["job_id"], row["attempt"]) for row in effects(clean, "fan-in")] == [(wid.steps["fan-in"], 1)]
    fanned = effects(clean, "fan-out")
    assert len(fanned) == FAN_OUT
    assert {row["job_id"] for row in fanned} == part_ids  # each parent's effect once
    assert [(row.attempt, row.outcome) for row in attempts_of(clean, wid.steps["fan-in"])] == [
        (1, "succeeded")
    ]
    assert workflow_views.status(clean, wid).summary.state == "succeeded"
    print(
        f"fan-out of {FAN_OUT} + fan-in: submitted in {submitted:.2f}s, fan-in succeeded after "
        f"{elapsed:.1f}s ({FAN_OUT / elapsed:.0f} steps/s on a worker of 2 processes)"
    )


def step(kind: str, name: str, payload: dict[str, Any] | None = None, **options: Any) -> Signature[Any]:
    """A Celery signature of a job kind, named as a workflow step. Its workflow options (``step``,
    ``inputs``, ``max_attempts``) go in through ``signature``: celery-types' ``Signature.set``
    knows only Celery's own options, though at run time both land in ``options``."""
    return signature(kind, kwargs=payload or {}, step=name, **options)


def canvas(*, fail: bool) -> Signature[Any]:
    """start | chord([inner-a | inner-b, side-1, side-2], body) | after: a chain with a chord
    inside, and a chain inside the chord's header.

    ``inner-b`` sums ``inner-a``'s value (or fails on purpose); the body sums its header's values."""
    inner_b = (
        step("test.step", "inner-b", {"fail": True}, max_attempts=1)
        if fail
        else step("test.sum", "inner-b", inputs={"numbers": ["^.value"]})
    )
    return chain(
        step("test.step", "start", {"value": 1}),
        chord(
            [
                chain(step("test.step", "inner-a", {"value": 5}), inner_b),
                step("test.step", "side-1", {"value": 10}),
                step("test.step", "side-2", {"value": 20}),
            ],
            step("test.sum", "body", {"key": "chord-body"}, inputs={"numbers": "*.value"}),
        ),
        step("test.step", "after", inputs={"value": "^.value"}),
    )


def test_a_canvas_with_a_chain_inside_a_chord_passes_results_to_the_body(platform, clean, producer):
    started = time.monotonic()
    wid = submit_canvas(canvas(fail=False), name="canvas-ok", producer=producer)
    view = wait_for_workflow(clean, wid, WORKFLOW_TIMEOUT)
    elapsed = time.monotonic() - started

    assert view.summary.state == "succeeded", {step.name: (step.state, step.error) for step in view.steps}
    assert [step.name for step in view.steps][-2:] == ["body", "after"]
    after = {step.name: [parent for parent, _ in step.after] for step in view.steps}
    assert after["body"] == ["inner-b", "side-1", "side-2"]
    found = rows(clean, list(wid.steps.values()))
    body = found[wid.steps["body"]]
    assert body.payload["numbers"] == [5, 10, 20]
    assert body.result == {"value": 35, "count": 3}
    assert found[wid.steps["after"]].result["value"] == 35
    assert body.started_at > max(
        found[wid.steps[name]].finished_at for name in ("inner-b", "side-1", "side-2")
    )
    assert len(effects(clean, "chord-body")) == 1
    print(f"canvas (chain inside a chord), succeeded: {elapsed:.2f}s")


def test_a_failure_in_a_chain_inside_a_chord_cancels_the_body_and_fails_the_workflow(
    platform, clean, producer
):
    """celery/celery#6220: in Celery, an error in a chain inside a chord's header skips the chord's
    error handling. Here the failed step cancels the body and what follows; the workflow fails."""
    started = time.monotonic()
    wid = submit_canvas(canvas(fail=True), name="canvas-fails", producer=producer)
    view = wait_for_workflow(clean, wid, WORKFLOW_TIMEOUT)
    elapsed = time.monotonic() - started

    assert view.summary.state == "failed"
    states = {step.name: step.state for step in view.steps}
    assert states == {
        "start": "succeeded",
        "inner-a": "succeeded",
        "inner-b": "failed",
        "side-1": "succeeded",
        "side-2": "succeeded",
        "body": "cancelled",
        "after": "cancelled",
    }
    found = rows(clean, list(wid.steps.values()))
    body = found[wid.steps["body"]]
    assert body.error["type"] == "ParentFailed"
    assert "'inner-b'" in body.error["message"]
    assert (body.attempt, body.started_at) == (0, None)  # never ran
    assert attempts_of(clean, body.id) == []
    assert "'body'" in found[wid.steps["after"]].error["message"]
    assert effects(clean, "chord-body") == []
    assert [(row.attempt, row.outcome) for row in attempts_of(clean, wid.steps["inner-b"])] == [(1, "error")]
    print(f"canvas (chain inside a chord), failed and cancelled: {elapsed:.2f}s")
