"""A workflow's spec without a database: composition, the checks a spec must pass, spec files,
inputs, and Celery's canvas compiled in (docs/workflows.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery import signature as celery_signature

from jobs import inputs
from jobs.errors import InvalidWorkflow
from jobs.kinds import registry
from jobs.workflows import Step, Workflow, from_canvas, from_spec, load
from jobs.workflows import chain as wf_chain
from jobs.workflows import chord as wf_chord
from jobs.workflows import group as wf_group
from tests.support import kinds as _kinds  # noqa: F401 - registers test.step and test.sum

pytestmark = pytest.mark.unit


def signature(*args: Any, **kwargs: Any) -> Any:
    """Celery's ``signature`` (its stubs do not know the options a workflow reads, like ``step``)."""
    return celery_signature(*args, **kwargs)


def parents_of(flow: Workflow) -> dict[str, list[str]]:
    return {step.name: [parent.step for parent in step.parents] for step in flow.plan(registry).steps}


def refused(spec: object) -> str:
    with pytest.raises(InvalidWorkflow) as caught:
        from_spec(spec).plan(registry)
    return caught.value.message


def test_composition_places_every_step_after_the_right_ones():
    flow = Workflow(
        "etl",
        wf_chain(
            Step("test.step", name="extract"),
            wf_chord(
                [Step("test.step", name=f"shard-{n}") for n in range(3)],
                Step("test.sum", name="merge", inputs={"numbers": "*.value"}),
            ),
            wf_group(Step("test.step", name="load"), Step("test.step", name="notify")),
        ),
    )
    assert parents_of(flow) == {
        "extract": [],
        "shard-0": ["extract"],
        "shard-1": ["extract"],
        "shard-2": ["extract"],
        "merge": ["shard-0", "shard-1", "shard-2"],
        "load": ["merge"],
        "notify": ["merge"],
    }


def test_unnamed_steps_are_named_after_their_kind():
    flow = Workflow("auto", wf_group(Step("test.step"), Step("test.step"), Step("test.sum", {"numbers": []})))
    assert flow.names == ["test_step-1", "test_step-2", "test_sum-1"]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            [{"name": "a", "kind": "test.step", "after": ["x"]}],
            "step 'a' comes after 'x', which is not a step",
        ),
        ([{"name": "a", "kind": "test.step", "after": ["a"]}], "step 'a' comes after itself"),
        (
            [
                {"name": "a", "kind": "test.step", "after": ["b"]},
                {"name": "b", "kind": "test.step", "after": ["a"]},
            ],
            "through a cycle",
        ),
        (
            [{"name": "a", "kind": "test.stpe"}],
            "step 'a': unknown job kind 'test.stpe' (did you mean 'test.step'?)",
        ),
        ([{"name": "a", "kind": "test.step", "payload": {"sleep": "x"}}], "step 'a': invalid payload"),
        ([{"name": "a", "kind": "test.step", "colour": "red"}], "step 'a': unknown field 'colour'"),
        ([{"name": "a.b", "kind": "test.step"}], "no dots"),
        ([{"name": "a", "kind": "test.step", "when": "sometimes"}], "'when' is 'succeeded' or 'finished'"),
        ([{"name": "a", "kind": "test.sum", "inputs": {"numbers": "b"}}], "step 'a': input 'numbers'"),
        (
            [
                {"name": "a", "kind": "test.step"},
                {"name": "b", "kind": "test.step"},
                {"name": "c", "kind": "test.sum", "after": ["a", "b"], "inputs": {"numbers": "^"}},
            ],
            "'^' means the only parent",
        ),
        (
            [{"name": "a", "kind": "test.step"}, {"name": "a", "kind": "test.step"}],
            "two steps with that name",
        ),
        ([], "has no steps"),
        ([{"name": "a", "kind": "test.unique", "payload": {"tenant": "t"}}], "cannot be a workflow's step"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_step(steps, expected):
    assert expected in refused({"name": "bad", "steps": steps})


def test_a_spec_is_an_object_with_a_name_and_steps():
    assert "'name' and 'steps'" in refused(["a"])
    assert "not 'stepz'" in refused({"name": "x", "stepz": []})
    assert "needs a 'name'" in refused({"steps": []})


def test_a_payload_may_leave_out_what_its_inputs_fill():
    flow = from_spec(
        {
            "name": "ok",
            "steps": {
                "a": {"kind": "test.step"},
                "b": {"kind": "test.sum", "after": ["a"], "inputs": {"numbers": ["a.value"]}},
            },
        }
    )
    plan = flow.plan(registry)
    assert plan.steps[1].payload == {}
    assert "field 'key'" in refused(
        {
            "name": "bad",
            "steps": [
                {"name": "a", "kind": "test.step"},
                {
                    "name": "b",
                    "kind": "test.sum",
                    "after": ["a"],
                    "payload": {"key": 5},
                    "inputs": {"numbers": "*"},
                },
            ],
        }
    )


def test_spec_files_in_yaml_and_json(tmp_path: Path):
    yaml_file = tmp_path / "flow.yaml"
    yaml_file.write_text(
        "name: pair\nsteps:\n  - {name: a, kind: test.step}\n"
        "  - {name: b, kind: test.step, after: [{step: a, when: finished}]}\n"
    )
    flow = load(yaml_file)
    (b,) = [step for step in flow.plan(registry).steps if step.name == "b"]
    assert b.parents[0].when == "finished"
    json_file = tmp_path / "flow.json"
    json_file.write_text('{"name": "one", "steps": [{"name": "a", "kind": "test.step"}]}')
    assert load(json_file).names == ["a"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InvalidWorkflow, match="not valid YAML at line"):
        load(bad)
    with pytest.raises(InvalidWorkflow, match="cannot read"):
        load(tmp_path / "missing.yaml")


def test_inputs_resolve_paths_lists_and_every_parent():
    parents = [
        inputs.Parent("a", "succeeded", {"rows": [{"id": 7}], "total": 3}),
        inputs.Parent("b", "failed", None),
    ]
    found = inputs.resolve({"x": "a.rows.0.id", "y": "*.total", "z": ["a.total", "b"]}, parents)
    assert found == {"x": 7, "y": [3, None], "z": [3, None]}
    with pytest.raises(inputs.UnresolvedInput, match="has no 'missing'"):
        inputs.resolve({"x": "a.missing"}, parents)
    payload: dict[str, object] = {"body": {"keep": 1}}
    inputs.set_field(payload, "body.total", 3)
    assert payload == {"body": {"keep": 1, "total": 3}}
    with pytest.raises(ValueError, match="overlap"):
        inputs.check({"body": "a", "body.total": "a.total"}, ["a"])


def test_a_canvas_with_a_chord_inside_a_chain_compiles_to_the_same_graph():
    app = Celery(set_as_current=False)
    canvas = chain(
        signature("test.step", kwargs={"value": 1}, app=app).set(step="first"),
        chord(
            [
                signature("test.step", app=app).set(step="h1"),
                chain(
                    signature("test.step", app=app).set(step="h2a"),
                    signature("test.step", app=app).set(step="h2b"),
                ),
            ],
            signature("test.sum", app=app).set(step="body", inputs={"numbers": "*.value"}),
        ),
        group(signature("test.step", app=app).set(step="g1"), signature("test.step", app=app).set(step="g2")),
    )
    flow = from_canvas(canvas, name="canvas")
    assert parents_of(flow) == {
        "first": [],
        "h1": ["first"],
        "h2a": ["first"],
        "h2b": ["h2a"],
        "body": ["h1", "h2b"],
        "g1": ["body"],
        "g2": ["body"],
    }
    plan = flow.plan(registry)
    assert plan.steps[0].payload == {"value": 1}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda app: signature("test.step", args=(1,), app=app), "keyword arguments"),
        (lambda app: signature("test.step", app=app).set(countdown=5), "'countdown' is not supported"),
        (
            lambda app: signature("test.step", app=app).on_error(signature("test.step", app=app)),
            "'link_error' is not supported",
        ),
    ],
)
def test_canvas_features_a_workflow_does_not_have_are_refused(make, expected):
    app = Celery(set_as_current=False)
    with pytest.raises(InvalidWorkflow, match=expected):
        from_canvas(make(app))


def test_a_dependency_given_to_add_keeps_its_own_policy():
    from jobs.workflows import After

    flow = Workflow("policies")
    flow.step("a", "test.step")
    b_then_c = wf_chain(Step("test.step", name="b"), Step("test.step", name="c"))
    flow.add(b_then_c, after=[After("a", "finished")])
    flow.add(Step("test.step", name="d", when="finished"), after=["c"])
    plan = {step.name: step.parents for step in flow.plan(registry).steps}
    assert plan["b"] == (After("a", "finished"),)
    assert plan["c"] == (After("b", "succeeded"),)
    assert plan["d"] == (After("c", "finished"),)
