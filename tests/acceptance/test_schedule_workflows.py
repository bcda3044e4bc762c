"""A schedule that fires a workflow, as an operator runs it: the real ``jobs`` command adds it from
a YAML spec, a real ``jobs beat`` fires it and a real worker runs every step; ``list`` and ``show``
say what it fires and how its workflows went; a bad spec is refused with one line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db, workflow_views
from jobs.schema import jobs, workflows
from jobs.settings import Settings
from tests.support.fixtures import Processes, run_jobs

pytestmark = pytest.mark.acceptance

DIAMOND = """\
name: diamond
steps:
  - {name: a, kind: test.step, payload: {value: 1}}
  - {name: b, kind: test.step, payload: {value: 2}, after: [a]}
  - {name: c, kind: test.step, payload: {value: 3}, after: [a]}
  - name: d
    kind: test.sum
    after: [b, c]
    inputs: {numbers: [b.value, c.value]}
"""


@pytest.fixture
def sched(clean: Settings, platform: Processes) -> Iterator[Settings]:
    def wipe() -> None:
        with db.transaction(clean) as conn:
            conn.execute(sa.text("TRUNCATE schedules"))

    wipe()
    try:
        yield clean
    finally:
        wipe()


def cli(*args: str) -> Any:
    result = run_jobs(*args)
    assert result.returncode == 0, f"jobs {' '.join(args)}: exit {result.returncode}\n{result.stderr}"
    return json.loads(result.stdout) if "--json" in args else result


def states(settings: Settings, name: str) -> list[str]:
    """The derived state of each workflow the schedule fired, oldest slot first."""
    with db.transaction(settings) as conn:
        ids = conn.execute(
            sa.select(workflows.c.id)
            .where(workflows.c.schedule_name == name)
            .order_by(workflows.c.schedule_slot)
        ).scalars()
        found = list(ids)
    return [workflow_views.status(settings, workflow_id).summary.state for workflow_id in found]


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not met in {timeout}s")


def test_a_beat_fires_the_workflow_of_a_yaml_spec_and_a_worker_runs_it(sched, tmp_path: Path):
    spec = tmp_path / "diamond.yaml"
    spec.write_text(DIAMOND)
    added = cli(
        "schedule", "add", "etl", "--workflow", str(spec), "--every", "2s", "--overlap", "skip", "--json"
    )
    assert (added["kind"], added["target"]) == (None, "workflow diamond (4 steps)")
    assert [step["name"] for step in added["workflow"]["steps"]] == ["a", "b", "c", "d"]

    # Two workflows fired and run to the end, one after the other (overlap=skip).
    wait_for(lambda: states(sched, "etl")[:2] == ["succeeded", "succeeded"], 40, "two workflows succeeded")
    cli("schedule", "pause", "etl")
    wait_for(lambda: "running" not in states(sched, "etl"), 20, "the last workflow finished")
    with db.transaction(sched) as conn:
        totals = conn.execute(
            sa.select(jobs.c.result)
            .join(workflows, workflows.c.id == jobs.c.workflow_id)
            .where(workflows.c.schedule_name == "etl", jobs.c.step == "d")
        ).scalars()
        assert {result["value"] for result in totals} == {5}  # b's value and c's, through d's inputs

    shown = cli("schedule", "show", "etl", "--json")
    fired = states(sched, "etl")
    assert shown["last_workflow"]["state"] == "succeeded"
    assert shown["last_job"] is None
    assert [firing["state"] for firing in shown["firings"]] == ["succeeded"] * len(fired)
    assert all(firing["workflow"] for firing in shown["firings"])
    human = cli("schedule", "list")
    assert "workflow diamond (4 steps)" in human.stdout

    triggered = run_jobs("schedule", "trigger", "etl")  # fires by hand while paused
    assert triggered.returncode == 0, triggered.stderr
    assert "fired by hand as workflow" in triggered.stderr
    workflow_id = triggered.stdout.strip()
    wait_for(lambda: states(sched, "etl").count("succeeded") == len(fired) + 1, 20, "the manual workflow")
    assert cli("schedule", "show", "etl", "--json")["last_workflow"] == {
        "id": workflow_id,
        "state": "succeeded",
    }


def test_a_spec_with_a_cycle_is_refused_with_one_line(sched, tmp_path: Path):
    spec = tmp_path / "cycle.yaml"
    spec.write_text(DIAMOND.replace("payload: {value: 1}}", "payload: {value: 1}, after: [d]}"))
    result = run_jobs("schedule", "add", "loop", "--workflow", str(spec), "--every", "2s")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "workflow 'diamond': step " in line
    assert "depends on itself through a cycle" in line
    assert "Traceback" not in result.stderr
    assert cli("schedule", "list", "--json")["schedules"] == []
