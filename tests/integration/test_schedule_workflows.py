"""Schedules that fire a workflow, against the real ledger: one workflow per slot even with two
leaders or a firing run twice, the overlap policy waiting for the workflow to finish, a spec refused
when saved and when fired, and the CLI (in this process) adding, showing, editing and triggering them.
The steps run without a worker where a test needs them finished (claim, succeed, release, as the
worker does)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from beat.cron import CronLoop
from jobs import db, ledger, workflow_views
from jobs.schema import jobs, schedules, workflows
from tests.integration.test_schedules import BeatThread, ok, refused, schedule_row, wait_until

pytestmark = pytest.mark.integration

SPEC: dict[str, Any] = {
    "name": "diamond",
    "steps": [
        {"name": "a", "kind": "test.step", "payload": {"value": 1}},
        {"name": "b", "kind": "test.step", "payload": {"value": 2}, "after": ["a"]},
        {"name": "c", "kind": "test.step", "payload": {"value": 3}, "after": ["a"]},
        {"name": "d", "kind": "test.sum", "after": ["b", "c"], "inputs": {"numbers": ["b.value", "c.value"]}},
    ],
}


@pytest.fixture
def sched(clean):
    def wipe() -> None:
        with db.transaction(clean) as conn:
            conn.execute(sa.text("TRUNCATE schedules, maintenance_runs"))

    wipe()
    yield clean
    wipe()


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "diamond.json"
    path.write_text(json.dumps(SPEC))
    return path


def fired_workflows(settings, name: str) -> list[Any]:
    with db.transaction(settings) as conn:
        return list(
            conn.execute(
                sa.select(workflows)
                .where(workflows.c.schedule_name == name)
                .order_by(workflows.c.schedule_slot)
            ).all()
        )


def steps_of(settings, workflow_id: uuid.UUID) -> dict[str, Any]:
    with db.transaction(settings) as conn:
        rows = conn.execute(sa.select(jobs).where(jobs.c.workflow_id == workflow_id)).all()
    return {row.step: row for row in rows}


def run_step(settings, job_id: uuid.UUID, result: dict[str, Any]) -> None:
    """One attempt as a worker records it: claim, succeed and release the children."""
    with db.transaction(settings) as conn:
        claimed = ledger.claim(conn, job_id, worker="w", lease=60)
        assert claimed is not None
        ledger.succeed(conn, job_id, claimed.attempt, result)
        ledger.release(conn, [job_id])


def hand_cron() -> CronLoop:
    """A cron loop that sees every slot as on time (the tests move ``now`` themselves)."""
    cron = CronLoop(interval=0.1, grace=3600, catchup=3600, declared=[])
    cron._synced = True
    return cron


def rewind(settings, name: str, to: datetime) -> None:
    with db.transaction(settings) as conn:
        conn.execute(sa.update(schedules).where(schedules.c.name == name).values(handled_until=to))


def test_a_workflow_schedule_fires_one_whole_workflow_per_slot_even_with_two_leaders(
    maintenance, sched, spec_file
):
    added = ok(
        "schedule", "add", "etl", "--workflow", str(spec_file), "--every", "1s", "--misfire", "all", "--json"
    )
    assert (added["kind"], added["target"]) == (None, "workflow diamond (4 steps)")
    with BeatThread(maintenance), BeatThread(maintenance):
        wait_until(lambda: len(fired_workflows(sched, "etl")) >= 3, what="three workflows fired")
    with db.transaction(sched) as conn:  # stop it: the rest of the test counts what fired
        conn.execute(sa.update(schedules).where(schedules.c.name == "etl").values(enabled=False))
    flows = fired_workflows(sched, "etl")
    slots = [flow.schedule_slot for flow in flows]
    assert [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(slots)] == [1.0] * (
        len(slots) - 1
    )  # every slot once, none left out (misfire=all)
    for flow in flows:
        assert (flow.name, flow.steps, flow.submitted_by) == ("diamond", 4, "schedule:etl")
        steps = steps_of(sched, flow.id)
        assert sorted(steps) == ["a", "b", "c", "d"]  # whole: every step, once
        assert {name: step.state for name, step in steps.items()} == {
            "a": "queued",
            "b": "held",
            "c": "held",
            "d": "held",
        }
        assert all(step.schedule_name is None for step in steps.values())  # the workflow is the firing
    with db.transaction(sched) as conn:  # no job fired on its own
        assert conn.execute(sa.select(sa.func.count()).where(jobs.c.schedule_name == "etl")).scalar_one() == 0
    row = schedule_row(sched, "etl")
    assert (row["last_workflow_id"], row["last_job_id"], row["last_slot"]) == (flows[-1].id, None, slots[-1])
    assert row["last_error"] is None

    # The same slots fired again (a stale leader, or a firing run twice): nothing more is created.
    for _ in range(2):
        with db.transaction(sched) as conn:
            conn.execute(sa.update(schedules).where(schedules.c.name == "etl").values(enabled=True))
        rewind(sched, "etl", slots[0] - timedelta(microseconds=1))
        hand_cron().fire(maintenance, "etl", slots[-1])
    assert [flow.id for flow in fired_workflows(sched, "etl")] == [flow.id for flow in flows]
    with db.transaction(sched) as conn:
        total = conn.execute(sa.select(sa.func.count()).where(jobs.c.workflow_id.is_not(None))).scalar_one()
    assert total == 4 * len(flows)
    assert schedule_row(sched, "etl")["last_workflow_id"] == flows[-1].id


def test_overlap_skip_waits_until_the_workflow_has_finished(maintenance, sched, spec_file):
    ok(
        "schedule",
        "add",
        "etl",
        "--workflow",
        str(spec_file),
        "--every",
        "1s",
        "--overlap",
        "skip",
        "--misfire",
        "all",
    )
    start = datetime.fromisoformat(ok("schedule", "show", "etl", "--json")["handled_until"]).replace(
        microsecond=0
    )
    start -= timedelta(hours=1)  # slots an hour back: the tests say what "now" is
    rewind(sched, "etl", start)
    cron = hand_cron()

    assert cron.fire(maintenance, "etl", start + timedelta(seconds=1)) == 1
    (first,) = fired_workflows(sched, "etl")
    assert cron.fire(maintenance, "etl", start + timedelta(seconds=3)) == 0  # its first step is queued
    row = schedule_row(sched, "etl")
    assert row["skipped"] == 2
    assert (
        f"overlap=skip: 2 slot(s) not fired (workflow {first.id} is still running)" in row["last_skip_reason"]
    )

    steps = steps_of(sched, first.id)
    run_step(sched, steps["a"].id, {"value": 1})
    run_step(sched, steps["b"].id, {"value": 2})
    run_step(sched, steps["c"].id, {"value": 3})  # d is released: still running
    assert cron.fire(maintenance, "etl", start + timedelta(seconds=4)) == 0
    shown = ok("schedule", "show", "etl", "--json")
    assert shown["last_workflow"] == {"id": str(first.id), "state": "running"}
    assert shown["last_job"] is None
    assert shown["skipped"] == 3

    run_step(sched, steps_of(sched, first.id)["d"].id, {"value": 5})
    assert workflow_views.status(sched, first.id).summary.state == "succeeded"
    assert cron.fire(maintenance, "etl", start + timedelta(seconds=5)) == 1
    second = fired_workflows(sched, "etl")[-1]
    assert second.schedule_slot == start + timedelta(seconds=5)
    shown = ok("schedule", "show", "etl", "--json")
    assert shown["last_workflow"] == {"id": str(second.id), "state": "running"}
    assert [(f["id"], f["state"], f["workflow"]) for f in shown["firings"]] == [
        (str(second.id), "running", True),
        (str(first.id), "succeeded", True),
    ]

    with db.transaction(sched) as conn:  # a workflow that failed has finished too
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.workflow_id == second.id)
            .values(state="failed", finished_at=sa.func.now())
        )
    assert cron.fire(maintenance, "etl", start + timedelta(seconds=6)) == 1
    assert ok("schedule", "show", "etl", "--json")["firings"][1]["state"] == "failed"


def test_a_workflow_that_no_longer_passes_its_checks_is_recorded_as_the_error(maintenance, sched):
    broken = {"name": "old", "steps": [{"name": "a", "kind": "gone.kind"}, {"name": "b", "kind": "ping"}]}
    with db.transaction(sched) as conn:  # saved while its kind existed
        conn.execute(
            sa.insert(schedules).values(
                name="orphan",
                payload={},
                workflow=broken,
                every_seconds=86400,
                handled_until=sa.func.now() - sa.text("interval '2 days'"),
            )
        )
    cron = CronLoop(interval=0.1, grace=5, catchup=3600, declared=[])
    assert cron.run(maintenance) == 0
    row = schedule_row(sched, "orphan")
    assert "workflow 'old': step 'a': unknown job kind 'gone.kind'" in row["last_error"]
    assert fired_workflows(sched, "orphan") == []
    with db.transaction(sched) as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 0
        )  # nothing half made
    assert cron.run(maintenance) == 0  # its slot was dealt with: not tried again every tick
    assert schedule_row(sched, "orphan")["last_error_at"] == row["last_error_at"]
    listed = ok("schedule", "list", "--json")["schedules"]
    assert listed[0]["target"] == "workflow old (2 steps)"
    assert "unknown job kind 'gone.kind'" in listed[0]["last_error"]


def test_the_cli_adds_shows_edits_and_triggers_a_workflow_schedule(sched, spec_file, tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text(
        "name: login\nsteps:\n  - {name: s, kind: test.secret, payload: {user: ann, token: hunter2}}\n"
        "  - {name: t, kind: test.step, after: [s]}\n"
    )
    ok("schedule", "add", "etl", "--workflow", str(spec_file), "--cron", "@daily", "--overlap", "skip")
    listed = ok("schedule", "list", "--json")["schedules"]
    assert [(view["name"], view["target"], view["workflow"]["name"]) for view in listed] == [
        ("etl", "workflow diamond (4 steps)", "diamond")
    ]
    human = ok("schedule", "list")
    assert "workflow diamond (4 steps)" in human.stdout
    shown = ok("schedule", "show", "etl")
    assert "diamond (4 steps)" in shown.stdout
    assert "d (test.sum) after b, c" in shown.stdout

    triggered = ok("schedule", "trigger", "etl", "--json")
    assert triggered["workflow"] is True
    (flow,) = fired_workflows(sched, "etl")
    assert str(flow.id) == triggered["id"]
    assert flow.submitted_by.startswith("schedule:etl manual (cli:")
    shown_json = ok("schedule", "show", "etl", "--json")
    assert shown_json["last_workflow"] == {"id": triggered["id"], "state": "running"}
    assert shown_json["firings"][0]["manual"] is True
    plain = ok("schedule", "trigger", "etl")
    assert plain.stdout.strip() == str(fired_workflows(sched, "etl")[-1].id)
    assert "fired by hand as workflow" in plain.stderr

    edited = ok("schedule", "edit", "etl", "--workflow", str(secret), "--json")
    assert edited["target"] == "workflow login (2 steps)"
    assert edited["workflow"]["steps"][0]["payload"]["token"] != "hunter2"  # masked, as a payload is
    assert schedule_row(sched, "etl")["workflow"]["steps"][0]["payload"]["token"] == "hunter2"
    assert edited["overlap"] == "skip"  # the rest of the schedule stays

    back = ok("schedule", "edit", "etl", "--kind", "ping", "-p", "message=hi", "--json")
    assert (back["kind"], back["payload"], back["workflow"], back["target"]) == (
        "ping",
        {"message": "hi"},
        None,
        "ping",
    )
    again = ok("schedule", "edit", "etl", "--workflow", str(spec_file), "--json")
    assert (again["kind"], again["payload"], again["target"]) == (None, {}, "workflow diamond (4 steps)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "x", "ping", "--workflow", "{spec}", "--every", "1m"), "give a KIND or --workflow FILE"),
        (("add", "x", "--every", "1m"), "give a KIND or --workflow FILE (one of them)"),
        (("add", "x", "--workflow", "{spec}", "--every", "1m", "-p", "value=1"), "carry their own payload"),
        (("add", "x", "--workflow", "{spec}", "--every", "1m", "--queue", "q"), "carry their own payload"),
        (("add", "x", "--workflow", "{missing}", "--every", "1m"), "cannot read"),
        (("add", "x", "--workflow", "{bad_yaml}", "--every", "1m"), "not valid YAML"),
        (("add", "x", "--workflow", "{cycle}", "--every", "1m"), "depends on itself through a cycle"),
        (("add", "x", "--workflow", "{unknown}", "--every", "1m"), "step 'b': unknown job kind 'no.such'"),
        (("add", "x", "--workflow", "{spec}", "--cron", "61 * * * *"), "invalid cron expression"),
    ],
)
def test_a_bad_workflow_schedule_is_one_line_exit_2_and_nothing_written(
    sched, spec_file, tmp_path, args, message
):
    files = {"spec": str(spec_file), "missing": str(tmp_path / "missing.yaml")}
    for name, text in {
        "bad_yaml": "name: [unclosed\n",
        "cycle": json.dumps({**SPEC, "steps": [{**SPEC["steps"][0], "after": ["d"]}, *SPEC["steps"][1:]]}),
        "unknown": json.dumps({**SPEC, "steps": [SPEC["steps"][0], {**SPEC["steps"][1], "kind": "no.such"}]}),
    }.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        files[name] = str(path)
    line = refused("schedule", *(arg.format(**files) for arg in args))
    assert message in line
    with db.transaction(sched) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schedules)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(workflows)).scalar_one() == 0


def test_a_bad_edit_of_a_workflow_schedule_changes_nothing(sched, spec_file, tmp_path):
    ok("schedule", "add", "etl", "--workflow", str(spec_file), "--every", "1h")
    before = schedule_row(sched, "etl")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**SPEC, "steps": [{**SPEC["steps"][0], "payload": {"nope": 1}}]}))
    assert "step 'a': invalid payload" in refused("schedule", "edit", "etl", "--workflow", str(broken))
    assert "carry their own payload" in refused("schedule", "edit", "etl", "-p", "value=1")
    assert "not both" in refused("schedule", "edit", "etl", "--kind", "ping", "--workflow", str(spec_file))
    assert schedule_row(sched, "etl") == before


def test_declared_workflow_schedules_are_synced(maintenance, sched):
    from jobs.schedules import ScheduleSpec
    from jobs.workflows import Step, Workflow, chain

    flow = Workflow(
        "pair", chain(Step("test.step", {"value": 1}, name="first"), Step("test.step", name="second"))
    )
    cron = CronLoop(0.1, 5, 3600, declared=[ScheduleSpec("code.pair", workflow=flow, every="1h")])
    assert cron.sync(maintenance) == ["added declared schedule code.pair"]
    stored = schedule_row(sched, "code.pair")["workflow"]
    assert stored["steps"][1]["after"] == [{"step": "first", "when": "succeeded"}]
    assert cron.sync(maintenance) == []  # the same workflow: nothing to change
    changed = Workflow(
        "pair", chain(Step("test.step", {"value": 2}, name="first"), Step("test.step", name="second"))
    )
    again = CronLoop(0.1, 5, 3600, declared=[ScheduleSpec("code.pair", workflow=changed, every="1h")])
    assert again.sync(maintenance) == ["updated declared schedule code.pair"]
    assert schedule_row(sched, "code.pair")["workflow"]["steps"][0]["payload"]["value"] == 2
    assert "declared in code" in refused("schedule", "edit", "code.pair", "--every", "5m")


def test_the_states_shown_for_fired_workflows_are_the_derived_ones(maintenance, sched, spec_file):
    """``jobs schedule show`` and the overlap policy derive a workflow's state on their own:
    they agree with ``jobs.workflow_views`` on workflows in each state."""
    ok("schedule", "add", "etl", "--workflow", str(spec_file), "--every", "1h")
    start = datetime.fromisoformat(ok("schedule", "show", "etl", "--json")["handled_until"]) - timedelta(
        days=1
    )
    start = start.replace(minute=0, second=0, microsecond=0)
    rewind(sched, "etl", start)
    cron = hand_cron()
    for hour in range(1, 5):
        assert cron.fire(maintenance, "etl", start + timedelta(hours=hour)) == 1
    first, second, third, _fourth = fired_workflows(sched, "etl")
    for flow, state in ((first, "succeeded"), (second, "failed"), (third, "cancelled")):
        with db.transaction(sched) as conn:
            conn.execute(sa.update(jobs).where(jobs.c.workflow_id == flow.id).values(state="succeeded"))
            conn.execute(
                sa.update(jobs).where(jobs.c.workflow_id == flow.id, jobs.c.step == "d").values(state=state)
            )
    firings = ok("schedule", "show", "etl", "--json")["firings"]
    assert Counter(f["state"] for f in firings) == Counter(["succeeded", "failed", "cancelled", "running"])
    for firing in firings:
        assert firing["state"] == workflow_views.status(sched, uuid.UUID(firing["id"])).summary.state
