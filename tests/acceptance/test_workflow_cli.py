"""``jobs workflow`` with the real command, a real worker and leader (the ``platform`` fixture):
submit from JSON and YAML, status drawn and as JSON, list filters, cancel of a running workflow,
retry after a failure, ``jobs explain``/``jobs status`` of a step, and bad specs refused whole.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db, workflow_views
from jobs.schema import job_attempts, jobs, workflows
from jobs.settings import Settings
from jobs.workflows import Step, Workflow, submit_workflow
from tests.support.fixtures import Processes, effects, run_jobs, run_jobs_together

pytestmark = pytest.mark.acceptance

DIAMOND_YAML = """\
name: diamond
steps:
  - {name: a, kind: test.step, payload: {value: 1, key: a}}
  - {name: b, kind: test.step, payload: {value: 20}, after: [a]}
  - {name: c, kind: test.step, payload: {value: 30}, after: [a]}
  - name: d
    kind: test.sum
    after: [b, c]
    inputs: {numbers: [b.value, c.value]}
"""


def submit(spec: Path | str | dict[str, Any], *extra: str) -> tuple[uuid.UUID, dict[str, Any]]:
    """Submit a spec (a file, or data sent as JSON on stdin) with ``--json``: its id and output."""
    if isinstance(spec, dict):
        done = run_jobs("workflow", "submit", "-", "--json", *extra, input=json.dumps(spec))
    else:
        done = run_jobs("workflow", "submit", str(spec), "--json", *extra)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    return uuid.UUID(out["id"]), out


def wait_workflow(
    settings: Settings, wid: uuid.UUID, states: tuple[str, ...], timeout: float = 60.0
) -> workflow_views.WorkflowView:
    deadline = time.monotonic() + timeout
    view = workflow_views.status(settings, wid)
    while view.summary.state not in states:
        assert time.monotonic() < deadline, f"workflow {wid} is {view.summary.counts}, not {states}"
        time.sleep(0.1)
        view = workflow_views.status(settings, wid)
    return view


def wait_step(settings: Settings, job_id: uuid.UUID, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with db.transaction(settings) as conn:
            now = conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
        if now == state:
            return
        assert time.monotonic() < deadline, f"step {job_id} is {now}, not {state}"
        time.sleep(0.05)


def rows_in_ledger(settings: Settings) -> tuple[int, int]:
    with db.transaction(settings) as conn:
        return (
            conn.execute(sa.select(sa.func.count()).select_from(workflows)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one(),
        )


def ok(done: Any) -> str:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return str(done.stdout)


def test_json_and_yaml_specs_run_and_status_draws_the_graph(clean, platform: Processes, tmp_path: Path):
    spec = tmp_path / "diamond.yaml"
    spec.write_text(DIAMOND_YAML)
    from_yaml, out = submit(spec)
    assert sorted(out["steps"]) == ["a", "b", "c", "d"]
    assert out["name"] == "diamond"
    from_json, _ = submit({"name": "single", "steps": [{"name": "only", "kind": "test.step"}]})
    view = wait_workflow(clean, from_yaml, ("succeeded",))
    wait_workflow(clean, from_json, ("succeeded",))
    as_json, human = run_jobs_together(
        ("workflow", "status", str(from_yaml), "--json"), ("workflow", "status", str(from_yaml))
    )
    data = json.loads(ok(as_json))
    assert data["state"] == "succeeded"
    assert data["counts"] == {"succeeded": 4}
    assert [step["name"] for step in data["step_list"]] == ["a", "b", "c", "d"]
    assert data["step_list"][3]["after"] == [
        {"step": "b", "when": "succeeded"},
        {"step": "c", "when": "succeeded"},
    ]
    assert all(step["duration"] is not None and step["attempt"] == 1 for step in data["step_list"])
    lines = ok(human).splitlines()
    assert lines[0].split()[:4] == ["workflow", "diamond", str(from_yaml), "succeeded"]
    assert "4 steps: 4 succeeded" in lines[1]
    assert lines[4].startswith("a ")
    assert "succeeded" in lines[4]
    assert lines[5].startswith("  └ b ")
    assert lines[5].rstrip().endswith(" a")
    assert lines[7].startswith("    └ d ")
    assert lines[7].rstrip().endswith("b, c")
    assert len(lines) == 8  # the header (2 lines), the finish, the columns, a line per step
    d = next(step for step in view.steps if step.name == "d")
    with db.transaction(clean) as conn:
        result = conn.execute(sa.select(jobs.c.result).where(jobs.c.id == d.job_id)).scalar_one()
    assert result == {"value": 50, "count": 2}  # d read b's and c's results


def hold(key: str) -> dict[str, Any]:
    """A step that runs until it is cancelled or a ``test_effects`` row keyed ``key`` exists
    (``release``), however slow the machine is (its time limit is 150 s)."""
    return {"kind": "test.hold", "payload": {"key": f"{key}:started", "release": key, "seconds": 120}}


def release(settings: Settings, key: str) -> None:
    with db.transaction(settings) as conn:
        conn.execute(
            sa.text("INSERT INTO test_effects (key, job_id, attempt) VALUES (:k, :j, 0)"),
            {"k": key, "j": uuid.uuid4()},
        )


def test_list_filters_by_state_name_time_and_limit(clean, platform: Processes):
    done, _ = submit({"name": "good", "steps": [{"name": "s", "kind": "test.step"}]})
    broken, _ = submit(
        {"name": "broken", "steps": [{"name": "s", "kind": "test.step", "payload": {"fail": True}}]}
    )
    slow, _ = submit({"name": "slow", "steps": [{"name": "s", **hold(f"slow-{uuid.uuid4()}")}]})
    wait_workflow(clean, done, ("succeeded",))
    wait_workflow(clean, broken, ("failed",))
    filters: list[tuple[str, ...]] = [
        (),
        ("--state", "failed"),
        ("--state", "running", "--state", "succeeded"),
        ("--name", "good"),
        ("--since", "1h"),
        ("--until", "1h"),
        ("--limit", "1"),
    ]
    *found, human = run_jobs_together(
        *(("workflow", "list", "--json", *args) for args in filters),
        ("workflow", "list", "--state", "failed"),
    )
    listed = [[item["id"] for item in json.loads(ok(done))["workflows"]] for done in found]
    everything = [str(slow), str(broken), str(done)]  # newest first
    assert listed == [
        everything,
        [str(broken)],
        [str(slow), str(done)],
        [str(done)],
        everything,
        [],
        [str(slow)],
    ]
    text = ok(human)
    assert str(broken) in text
    assert "broken" in text
    assert "good" not in text
    assert "1 workflow(s)" in human.stderr
    ok(run_jobs("workflow", "cancel", str(slow)))


def test_cancel_stops_the_running_step_and_every_waiting_one_of_a_big_workflow(clean, platform: Processes):
    spec = {
        "name": "fan-out",
        "steps": [
            {"name": "start", **hold(f"start-{uuid.uuid4()}")},
            *(
                {"name": f"shard-{n}", "kind": "test.step", "payload": {"value": n}, "after": ["start"]}
                for n in range(1, 1001)
            ),
            {
                "name": "merge",
                "kind": "test.sum",
                "after": [f"shard-{n}" for n in range(1, 1001)],
                "inputs": {"numbers": "*.value"},
            },
        ],
    }
    wid, out = submit(spec)
    start = uuid.UUID(out["steps"]["start"])
    wait_step(clean, start, "running")
    refused = run_jobs("workflow", "retry", str(wid))
    assert refused.returncode == 2
    assert "still running" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    began = time.monotonic()
    human = ok(run_jobs("workflow", "status", str(wid)))
    drawn = time.monotonic() - began
    lines = human.splitlines()
    assert len(lines) < 10, human  # the fan-out is one row
    shards = next(line for line in lines if "shard-1 … shard-1000 (1000 steps)" in line)
    assert "1000 held" in shards
    assert "waits for start" in shards
    assert "(1000); waits for all" in next(line for line in lines if "merge" in line)
    every = ok(run_jobs("workflow", "status", str(wid), "--all"))
    assert sum(1 for line in every.splitlines() if "└ shard-" in line) == 1000
    done = run_jobs("workflow", "cancel", str(wid), "--json")
    cancelled = json.loads(ok(done))
    assert cancelled["cancelled"] == 1002
    assert cancelled["stopped"] == 1
    assert {step["was"] for step in cancelled["steps"]} == {"running", "held"}
    platform.wait_log("worker", f"job {start} test.hold attempt 1/1 on queue default cancelled while running")
    with db.transaction(clean) as conn:
        outcomes = conn.execute(sa.select(job_attempts.c.job_id, job_attempts.c.outcome)).all()
    assert [tuple(row) for row in outcomes] == [(start, "cancelled")]  # no shard ever started
    assert wait_workflow(clean, wid, ("cancelled",)).summary.counts == {"cancelled": 1002}
    again = run_jobs("workflow", "cancel", str(wid))
    assert again.returncode == 2
    assert "nothing to cancel" in again.stderr
    print(f"status of a 1002-step workflow drawn in {drawn:.2f}s (the command's whole run)")


def test_retry_reruns_only_the_failed_step_and_what_follows(clean, platform: Processes):
    fixed = f"fixed-{uuid.uuid4()}"
    spec = {
        "name": "repairable",
        "steps": [
            {"name": "a", "kind": "test.step", "payload": {"value": 1, "key": f"{fixed}:a"}},
            {
                "name": "b",
                "kind": "test.step",
                "payload": {"value": 20, "key": f"{fixed}:b", "fail_until": fixed},
                "after": ["a"],
                "max_attempts": 1,
            },
            {"name": "c", "kind": "test.step", "payload": {"value": 30, "key": f"{fixed}:c"}, "after": ["a"]},
            {
                "name": "d",
                "kind": "test.sum",
                "after": ["b", "c"],
                "inputs": {"numbers": ["b.value", "c.value"]},
            },
        ],
    }
    wid, out = submit(spec)
    first = wait_workflow(clean, wid, ("failed",))
    assert {step.name: step.state for step in first.steps} == {
        "a": "succeeded",
        "b": "failed",
        "c": "succeeded",
        "d": "cancelled",
    }
    release(clean, fixed)  # the operator fixes the cause
    done = run_jobs("workflow", "retry", str(wid))
    assert ok(done).splitlines() == [
        f"workflow {wid}: running 2 step(s) again: b, d",
        "kept the results of 2 step(s): a, c",
    ]
    view = wait_workflow(clean, wid, ("succeeded",))
    steps = {step.name: step for step in view.steps}
    assert steps["a"].job_id == uuid.UUID(out["steps"]["a"])
    assert steps["a"].replaced == 0
    assert steps["b"].replaced == 1
    assert steps["d"].replaced == 1
    assert steps["c"].replaced == 0
    assert [len(effects(clean, f"{fixed}:{name}")) for name in "abc"] == [1, 1, 1]  # a and c ran once
    with db.transaction(clean) as conn:
        result = conn.execute(sa.select(jobs.c.result).where(jobs.c.id == steps["d"].job_id)).scalar_one()
    assert result == {"value": 50, "count": 2}
    old_b = out["steps"]["b"]
    explained = json.loads(ok(run_jobs("explain", old_b, "--json")))
    assert [reason["code"] for reason in explained["reasons"]] == ["replaced", "finished"]
    assert explained["workflow"]["replaced_by"] == str(steps["b"].job_id)
    human = ok(run_jobs("workflow", "status", str(wid)))
    assert " run " in human.splitlines()[3]  # a column for steps that ran again


def test_explain_and_status_of_a_waiting_step_name_its_workflow_and_parents(clean, platform: Processes):
    slow_key = f"slow-{uuid.uuid4()}"
    wid, out = submit(
        {
            "name": "waiting",
            "steps": [
                {"name": "slow", **hold(slow_key)},
                {"name": "quick", "kind": "test.step"},
                {"name": "last", "kind": "test.step", "after": ["slow", "quick"]},
            ],
        }
    )
    wait_step(clean, uuid.UUID(out["steps"]["quick"]), "succeeded")
    wait_step(clean, uuid.UUID(out["steps"]["slow"]), "running")
    last = out["steps"]["last"]
    as_json, human, status_json, status_human = run_jobs_together(
        ("explain", last, "--json"), ("explain", last), ("status", last, "--json"), ("status", last)
    )
    explained = json.loads(ok(as_json))
    (reason,) = explained["reasons"]
    assert reason["code"] == "parents"
    assert reason["message"] == "waits for 1 of its 2 parent step(s): slow (running)"
    assert explained["workflow"]["waiting_for"] == ["slow"]
    assert explained["workflow"]["id"] == str(wid)
    assert explained["workflow"]["step"] == "last"
    text = ok(human)
    assert f"step 'last' of workflow 'waiting' ({wid})" in text
    assert "slow (running)" in text
    job = json.loads(ok(status_json))
    assert job["workflow"]["name"] == "waiting"
    assert job["workflow"]["step"] == "last"
    assert job["workflow_id"] == str(wid)
    shown = ok(status_human)
    assert f"waiting ({wid})" in shown
    assert "last, after slow, quick" in shown
    assert "waiting for 1 parent step(s)" in shown
    quick = json.loads(ok(run_jobs("explain", out["steps"]["quick"], "--json")))
    assert quick["workflow"]["step"] == "quick"
    assert quick["reasons"][0]["code"] == "finished"
    release(clean, slow_key)
    wait_workflow(clean, wid, ("succeeded",))


def test_completion_offers_workflow_ids_and_names(producer):
    wid = submit_workflow(Workflow("completed-name", Step("ping")), producer=producer)

    def complete(words: str) -> list[str]:
        typed = words.split(" ")
        done = run_jobs(
            env={"_JOBS_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(typed) - 1)}
        )
        return [line.partition(",")[2] for line in ok(done).splitlines() if line]

    assert complete("jobs workflow st") == ["status"]
    assert complete(f"jobs workflow status {str(wid)[:8]}") == [str(wid)]
    assert complete("jobs workflow list --name completed-") == ["completed-name"]


BAD_SPECS = {
    "cycle": (
        '{"name": "w", "steps": [{"name": "a", "kind": "ping", "after": ["b"]},'
        ' {"name": "b", "kind": "ping", "after": ["a"]}]}',
        "step 'a' depends on itself through a cycle",
    ),
    "unknown kind": (
        '{"name": "w", "steps": [{"name": "a", "kind": "no.such"}]}',
        "step 'a': unknown job kind",
    ),
    "missing step": (
        '{"name": "w", "steps": [{"name": "a", "kind": "ping"},'
        ' {"name": "b", "kind": "ping", "after": ["z"]}]}',
        "step 'b' comes after 'z', which is not a step",
    ),
    "invalid payload": (
        "name: w\nsteps:\n  - {name: a, kind: ping}\n"
        "  - {name: b, kind: test.sum, payload: {numbers: x}, after: [a]}\n",
        "step 'b': invalid payload for kind 'test.sum': numbers",
    ),
    "bad YAML": ("name: w\nsteps:\n  - {name: a, kind: ping\n", "not valid YAML"),
    "bad JSON": ('{"name": "w", "steps": [', "not valid JSON"),
}


def test_bad_specs_are_refused_in_one_line_naming_the_step_and_create_nothing(clean, tmp_path: Path):
    calls = []
    for number, (text, _) in enumerate(BAD_SPECS.values()):
        spec = tmp_path / f"spec-{number}.{'json' if text.startswith('{') else 'yaml'}"
        spec.write_text(text)
        calls.append(("workflow", "submit", str(spec)))
    calls.append(("workflow", "submit", str(tmp_path / "missing.yaml")))
    calls.append(("workflow", "status", "not-an-id"))
    expected = [said for _, said in BAD_SPECS.values()] + ["cannot read", "is not a workflow id"]
    for done, said in zip(run_jobs_together(*calls), expected, strict=True):
        assert done.returncode == 2, (said, done.stderr)
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (said, lines)
        assert lines[0].startswith("error: "), lines
        assert said in lines[0], (said, lines)
    stdin = run_jobs("workflow", "submit", "-", input=BAD_SPECS["cycle"][0])
    assert stdin.returncode == 2
    assert BAD_SPECS["cycle"][1] in stdin.stderr
    assert rows_in_ledger(clean) == (0, 0)
