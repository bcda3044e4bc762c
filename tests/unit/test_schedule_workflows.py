"""Schedules that fire a workflow, without servers: the spec checked and stored as data, refusals,
what list and show say it fires, and the derived state the overlap policy and show rely on."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from jobs.catalog import load_kinds
from jobs.errors import InvalidWorkflow
from jobs.schedules import InvalidSchedule, ScheduleSpec, describe_target, validate
from jobs.schedules.firings import derived
from jobs.states import STATES
from jobs.workflow_views import derive
from jobs.workflows import After, Step, Workflow, chain, chord, from_spec

pytestmark = pytest.mark.unit

DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "steps": [
        {"name": "a", "kind": "test.step", "payload": {"value": 1}},
        {"name": "b", "kind": "test.step", "payload": {"value": 2}, "after": ["a"]},
        {"name": "c", "kind": "test.step", "after": [{"step": "a", "when": "finished"}], "queue": "slow"},
        {"name": "d", "kind": "test.sum", "after": ["b", "c"], "inputs": {"numbers": ["b.value", "c.value"]}},
    ],
}


@pytest.fixture(scope="module")
def registry():
    return load_kinds(["tests.support.kinds"])


def spec(workflow: Any = None, **fields: Any) -> ScheduleSpec:
    return ScheduleSpec("nightly", workflow=DIAMOND if workflow is None else workflow, every="1h", **fields)


def test_a_workflow_schedule_stores_its_checked_spec_as_data(registry):
    values = validate(spec(), registry)
    assert (values["kind"], values["payload"], values["queue"], values["priority"]) == (None, {}, None, None)
    stored = values["workflow"]
    assert stored["name"] == "diamond"
    assert [step["name"] for step in stored["steps"]] == ["a", "b", "c", "d"]
    a, b, c, d = stored["steps"]
    assert a["payload"] == {
        "value": 1,
        "key": None,
        "sleep": 0.0,
        "fail": False,
        "fail_until": None,
    }  # its validated form
    assert b["after"] == [{"step": "a", "when": "succeeded"}]  # every dependency explicit
    assert c["after"] == [{"step": "a", "when": "finished"}]
    assert c["queue"] == "slow"
    assert d["payload"] == {}  # filled by its inputs when released: kept as given
    assert d["inputs"] == {"numbers": ["b.value", "c.value"]}
    # What is stored reads back into the same workflow, and saving it again changes nothing.
    assert validate(spec(stored), registry)["workflow"] == stored
    assert from_spec(stored).plan(registry).steps[3].parents == (After("b"), After("c"))


def test_a_composed_workflow_declared_in_code_is_stored_with_its_steps_named(registry):
    fan_in = Step("test.sum", inputs={"numbers": "*.value"})
    flow = Workflow("fan-in", chord([Step("test.step", {"value": n}) for n in range(3)], fan_in))
    flow.add(chain(Step("test.step", name="report", after=[After("test_sum-1", "finished")])))
    stored = validate(spec(flow), registry)["workflow"]
    names = [step["name"] for step in stored["steps"]]
    assert names == ["test_step-1", "test_step-2", "test_step-3", "test_sum-1", "report"]
    assert [parent["step"] for parent in stored["steps"][3]["after"]] == names[:3]
    assert stored["steps"][4]["after"] == [{"step": "test_sum-1", "when": "finished"}]
    assert validate(spec(stored), registry)["workflow"] == stored


def _with(step: str, **changes: Any) -> dict[str, Any]:
    steps = [{**item, **changes} if item["name"] == step else item for item in DIAMOND["steps"]]
    return {"name": "diamond", "steps": steps}


@pytest.mark.parametrize(
    ("given", "error", "message"),
    [
        (spec(kind="ping"), InvalidSchedule, "schedule nightly: give a job kind or a workflow (one of them)"),
        (ScheduleSpec("nightly", every="1h"), InvalidSchedule, "give a job kind or a workflow (one of them)"),
        (spec(payload={"value": 1}), InvalidSchedule, "a workflow's steps carry their own payload"),
        (spec(queue="slow"), InvalidSchedule, "set them in its spec, not on the schedule"),
        (spec(priority=3), InvalidSchedule, "a workflow's steps carry their own payload, queue and priority"),
        (
            spec(_with("b", kind="no.such")),
            InvalidWorkflow,
            "workflow 'diamond': step 'b': unknown job kind 'no.such'",
        ),
        (spec(_with("a", after=["d"])), InvalidWorkflow, "workflow 'diamond': step "),
        (spec(_with("a", after=["zz"])), InvalidWorkflow, "step 'a' comes after 'zz', which is not a step"),
        (spec(_with("a", payload={"nope": 1})), InvalidWorkflow, "step 'a': invalid payload"),
        (spec(_with("a", priority=12)), InvalidWorkflow, "step 'a': priority 12 is out of range"),
        (spec(_with("a", kind="test.unique")), InvalidWorkflow, "it cannot be a workflow's step"),
        (spec(_with("b", inputs={"value": "zz.value"})), InvalidWorkflow, "workflow 'diamond': step 'b'"),
        (spec({"name": "x", "steps": "a"}), InvalidWorkflow, "workflow 'x': 'steps' is a list of steps"),
        (spec({"steps": []}), InvalidWorkflow, "a workflow spec needs a 'name'"),
        (spec({"name": "x", "steps": []}), InvalidWorkflow, "workflow 'x' has no steps"),
        (spec(_with("a", payload={"value": "a\x00b"})), InvalidWorkflow, "contains a NUL character"),
    ],
)
def test_an_invalid_workflow_schedule_is_refused_with_one_line(registry, given, error, message):
    with pytest.raises(error) as caught:
        validate(given, registry)
    assert message in caught.value.message
    assert "\n" not in caught.value.message
    assert caught.value.exit_code == 2


def test_a_cycle_names_the_steps_in_it(registry):
    with pytest.raises(InvalidWorkflow, match=r"depends on itself through a cycle: .*a.*d.*a|a.*b.*d.*a"):
        validate(spec(_with("a", after=["d"])), registry)


def test_what_a_schedule_fires_in_a_few_words():
    assert describe_target(SimpleNamespace(kind="ping", workflow=None)) == "ping"
    assert describe_target(SimpleNamespace(kind=None, workflow=DIAMOND)) == "workflow diamond (4 steps)"
    one = {"name": "solo", "steps": [{"name": "a", "kind": "ping"}]}
    assert describe_target(SimpleNamespace(kind=None, workflow=one)) == "workflow solo (1 step)"


def test_the_state_a_schedule_derives_for_its_workflows_is_the_operators_one():
    """``jobs.schedules`` may not import ``jobs.workflow_views``: its own ``derived`` must agree."""
    for size in range(1, 4):
        for states in itertools.product(STATES, repeat=size):
            counts: dict[str, int] = {}
            for state in states:
                counts[state] = counts.get(state, 0) + 1
            assert derived(states) == derive(counts), states
