"""Scenarios 25-27: a running workflow survives a worker's SIGKILL, Redis restarted empty and
PostgreSQL stopped for 10 s.

Each runs the same shape (``fan_in``): step ``a``, then a group ``b0``..``bN`` side by side (each
sleeping, so some are mid-body when the fault strikes), then ``c`` summing their values (the
fan-in), then ``d`` taking ``c``'s total. Every step writes an effect through ``ctx.session``,
in its job's transaction, as its body begins: an attempt killed or cut off mid-body rolls its
effect back, and a step that ran its body to success twice would show two.

The fault strikes once two of the group are running and their effects are written but not yet
committed (``uncommitted_effects``). Each scenario then waits for the workflow's derived state
(``jobs.workflow_views.status``) and checks: the workflow succeeded, every step once, the steps
the fault interrupted ran again (their effect is the later attempt's alone), the fan-in ran
once, after every parent finished, with every parent's value. The checker runs after each, as
after every scenario, with its workflow promises (``tests.faults.workflow_checks``): every
parent's end counted, nothing left waiting, each effect once.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import workflow_views
from jobs.errors import LedgerUnavailable
from jobs.schema import job_attempts, jobs
from jobs.workflow_views import WorkflowView
from jobs.workflows import Step, Workflow, WorkflowId, chain, chord, submit_workflow
from tests.faults.harness import Platform

pytestmark = pytest.mark.acceptance


def fan_in(name: str, width: int, sleep: float) -> Workflow:
    """``a``, then ``b0``..``b{width-1}`` (values 1..width, each sleeping), then ``c`` (their
    sum), then ``d`` (``c``'s total); each step's effect under ``{name}-{step}``."""
    group = [
        Step("test.step", {"value": n + 1, "key": f"{name}-b{n}", "sleep": sleep}, name=f"b{n}")
        for n in range(width)
    ]
    return Workflow(
        name,
        chain(
            Step("test.step", {"value": 0, "key": f"{name}-a"}, name="a"),
            chord(group, Step("test.sum", {"key": f"{name}-c"}, name="c", inputs={"numbers": "*.value"})),
            Step("test.step", {"key": f"{name}-d"}, name="d", inputs={"value": "^.value"}),
        ),
    )


def submit(platform: Platform, flow: Workflow) -> WorkflowId:
    workflow = submit_workflow(flow, producer=platform.producer)
    platform.workload.accept(*workflow.steps.values())
    return workflow


def steps(platform: Platform, workflow: uuid.UUID) -> dict[str, dict[str, Any]]:
    """Each step's job row, by step name."""
    with platform.ledger() as conn:
        rows = conn.execute(sa.select(jobs).where(jobs.c.workflow_id == workflow)).all()
    return {row.step: dict(row._mapping) for row in rows}


def uncommitted_effects(platform: Platform) -> int:
    """How many transactions have written to ``test_effects`` and not committed (bodies mid-run)."""
    with platform.ledger() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(DISTINCT l.virtualtransaction) FROM pg_locks l"
                    " JOIN pg_class c ON c.oid = l.relation"
                    " WHERE c.relname = 'test_effects' AND l.mode = 'RowExclusiveLock'"
                )
            ).scalar_one()
        )


def mid_body(platform: Platform, workflow: uuid.UUID, count: int, timeout: float = 30) -> list[str]:
    """Wait until ``count`` steps run with their effects written, uncommitted; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        running = sorted(name for name, row in steps(platform, workflow).items() if row["state"] == "running")
        if len(running) >= count and uncommitted_effects(platform) >= count:
            return running
        assert time.monotonic() < deadline, f"{count} steps not mid-body in {timeout}s: {running}"
        platform.supervise()
        time.sleep(0.05)


def wait_workflow(platform: Platform, workflow: uuid.UUID, timeout: float) -> WorkflowView:
    """Poll the workflow's derived state until it is no longer running (PostgreSQL may be away)."""
    deadline = time.monotonic() + timeout
    view: WorkflowView | None = None
    while time.monotonic() < deadline:
        try:
            view = workflow_views.status(platform.settings, workflow)
        except LedgerUnavailable:
            view = None
        if view is not None and view.summary.state != "running":
            return view
        platform.supervise()
        time.sleep(0.1)
    counts = view.summary.counts if view is not None else "ledger unreachable"
    raise AssertionError(
        f"workflow {workflow} still running after {timeout}s: {counts}\n{platform.describe_fleet()}"
    )


def effects_of(platform: Platform, job_id: uuid.UUID) -> list[int]:
    """The attempts of this job whose effects were committed."""
    with platform.ledger() as conn:
        return sorted(
            conn.execute(
                sa.text("SELECT attempt FROM test_effects WHERE job_id = :j"), {"j": job_id}
            ).scalars()
        )


def attempts_of(platform: Platform, job_id: uuid.UUID) -> list[Any]:
    with platform.ledger() as conn:
        return list(
            conn.execute(
                sa.select(job_attempts.c.attempt, job_attempts.c.started_at, job_attempts.c.outcome)
                .where(job_attempts.c.job_id == job_id)
                .order_by(job_attempts.c.attempt)
            ).all()
        )


def assert_completed(
    platform: Platform, workflow: WorkflowId, view: WorkflowView, width: int, interrupted: list[str]
) -> dict[str, dict[str, Any]]:
    """The workflow succeeded; every step once; the interrupted steps ran again and kept only the
    later attempt's effect; the fan-in ran once, after all its parents, with all their values."""
    rows = steps(platform, workflow)
    assert view.summary.state == "succeeded", view.summary.counts
    assert {step.name: step.state for step in view.steps} == dict.fromkeys(rows, "succeeded")
    assert set(rows) == set(workflow.steps) == {"a", "c", "d", *(f"b{n}" for n in range(width))}
    for name, row in rows.items():
        assert effects_of(platform, row["id"]) == [row["attempt"]], (name, row["attempt"])
        assert row["pending"] == 0, name
    for name in interrupted:  # the fault struck mid-body: that attempt's effect rolled back
        assert rows[name]["attempt"] >= 2, (name, rows[name]["attempt"])
    fan = attempts_of(platform, rows["c"]["id"])
    assert [(attempt.attempt, attempt.outcome) for attempt in fan] == [(1, "succeeded")]
    last_parent = max(rows[f"b{n}"]["finished_at"] for n in range(width))
    assert fan[0].started_at >= last_parent
    total = width * (width + 1) // 2
    assert rows["c"]["result"] == {"value": total, "count": width}
    assert rows["d"]["result"]["value"] == total
    return rows


def retried(rows: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name} x{row['attempt']}" for name, row in sorted(rows.items()) if row["attempt"] > 1)


def test_25_sigkill_of_a_worker_mid_step_of_a_running_workflow(faults: Platform) -> None:
    width = 4
    workflow = submit(faults, fan_in("s25", width, 2.0))
    interrupted = mid_body(faults, workflow, 2)  # the worker's two processes, both mid-step
    before = Counter(row["state"] for row in steps(faults, workflow).values())
    faults.kill("worker", signal.SIGKILL)
    killed = time.monotonic()
    faults.forget("worker")  # its pool processes die with it (Celery's parent-death signal)
    faults.start_worker("worker", wait=False)  # the supervisor's restart finishes the workflow
    view = wait_workflow(faults, workflow, timeout=60)
    took = time.monotonic() - killed
    rows = assert_completed(faults, workflow, view, width, interrupted)
    print(
        f"worker SIGKILLed with {', '.join(interrupted)} mid-body ({dict(before)}): the workflow"
        f" succeeded {took:.1f}s after the kill; attempts: {retried(rows)}"
    )
    assert before["held"] == 2  # c and d waited in the ledger
    assert all(rows[name]["attempt"] == 2 for name in interrupted)


def test_26_redis_restarted_empty_mid_workflow(faults: Platform) -> None:
    width = 6
    workflow = submit(faults, fan_in("s26", width, 1.5))
    mid_body(faults, workflow, 2)
    on_broker = faults.on_broker()
    before = steps(faults, workflow)
    mark = faults.log_mark("beat")
    faults.redis.restart_empty()
    restarted = time.monotonic()
    held_after = {name for name, row in steps(faults, workflow).items() if row["state"] == "held"}
    redriven = faults.wait_log_since("beat", mark, "queued job(s) published again", timeout=20)
    view = wait_workflow(faults, workflow, timeout=60)
    took = time.monotonic() - restarted
    rows = assert_completed(faults, workflow, view, width, [])
    states = Counter(row["state"] for row in before.values())
    held = {name for name, row in before.items() if row["state"] == "held"}
    print(
        f"Redis restarted empty mid-workflow ({dict(states)}): re-driven {redriven:.1f}s after it,"
        f" the workflow succeeded {took:.1f}s after it; attempts: {retried(rows) or 'one each'};"
        f" supervisor: {faults.restarts or 'nothing restarted'}"
    )
    assert states["running"] >= 1
    assert states["queued"] >= 1
    assert held == held_after == {"c", "d"}  # held steps live in the ledger alone: none lost
    assert not {before[name]["id"] for name in held} & on_broker  # and were never on the broker


def test_27_postgresql_stopped_for_10_seconds_mid_workflow(faults: Platform) -> None:
    width = 4
    workflow = submit(faults, fan_in("s27", width, 3.0))
    interrupted = mid_body(faults, workflow, 2)
    before = Counter(row["state"] for row in steps(faults, workflow).values())
    faults.postgres.stop()  # fast shutdown: every session is cut, the bodies' transactions too
    stopped = time.monotonic()
    try:
        time.sleep(10)
    finally:
        faults.postgres.start()
    restarted = time.monotonic()
    view = wait_workflow(faults, workflow, timeout=60)
    took = time.monotonic() - restarted
    rows = assert_completed(faults, workflow, view, width, interrupted)
    print(
        f"PostgreSQL down {restarted - stopped:.0f}s with {', '.join(interrupted)} mid-body"
        f" ({dict(before)}): the workflow succeeded {took:.1f}s after it returned; attempts:"
        f" {retried(rows)}"
    )
    assert before["held"] == 2
