"""The README's worked examples work as printed.

The section whose heading mentions "Adding a kind" must hold a ``python`` code
block (the module declaring the kind) and a shell block with the ``jobs
submit`` command that runs it. The test writes the module to a scratch
directory, starts a worker with ``JOBS_KIND_MODULES`` naming it, runs the
README's ``jobs submit`` line with ``--wait``, and expects the job to succeed.

The ``jobs schedule`` lines of the README's shell blocks run in order, each
must exit 0, and the schedules they leave must be what they say (added,
paused, removed).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import uuid
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from jobs import db
from jobs.schema import schedules
from tests.support.fixtures import ROOT, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance

README = ROOT / "README.md"
MODULE = "readme_example_kinds"
HEADING = re.compile(r"^(#{1,6})\s+.*\badding a (job )?kind\b.*$", re.IGNORECASE | re.MULTILINE)
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Example:
    code: str
    submit: list[str]


def find_example(text: str) -> Example | None:
    """The section's first python block and first ``jobs submit`` line; None without such a section."""
    heading = HEADING.search(text)
    if heading is None:
        return None
    level = len(heading.group(1))
    fences = [m.span() for m in FENCE.finditer(text)]
    following = next(
        (
            m
            for m in re.compile(rf"^#{{1,{level}}}\s", re.MULTILINE).finditer(text, heading.end())
            if not any(start <= m.start() < end for start, end in fences)  # a comment in a code block
        ),
        None,
    )
    section = text[heading.end() : following.start() if following else len(text)]
    code, submit = None, None
    for fence in FENCE.finditer(section):
        language, body = fence.group(1).lower(), fence.group(2)
        if language in ("python", "py"):
            code = body if code is None else code
            continue
        for line in body.splitlines():
            try:
                words = shlex.split(line.strip().removeprefix("$ "), comments=True)
            except ValueError:
                continue
            if submit is None and words[:2] == ["jobs", "submit"]:
                submit = words[1:]
    if code is None:
        return None
    assert submit is not None, "the 'Adding a kind' section shows no `jobs submit` command for its kind"
    return Example(code=code, submit=submit)


@pytest.fixture(scope="module")
def example() -> Example:
    found = find_example(README.read_text(encoding="utf-8")) if README.exists() else None
    if found is None:
        pytest.skip("README.md has no worked example yet (a python block under an 'Adding a kind' heading)")
    return found


def test_find_example_reads_the_section_it_is_meant_to():
    text = (
        "# jobs\n\n## Adding a kind\n\nDeclare it:\n\n```python\nimport jobs\n```\n\nRun it:\n\n"
        "```console\n$ jobs submit images.resize -p image_id=7  # try it\n```\n\n## Next\n\n"
        "```python\nnot this\n```\n"
    )
    found = find_example(text)
    assert found == Example(code="import jobs\n", submit=["submit", "images.resize", "-p", "image_id=7"])
    assert find_example("# jobs\n\n## Other\n\n```python\nx = 1\n```\n") is None


def test_the_readme_example_runs(example, processes, clean, tmp_path):
    (tmp_path / f"{MODULE}.py").write_text(example.code, encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {"JOBS_KIND_MODULES": MODULE, "PYTHONPATH": path}

    processes.start("worker", "worker", "-c", "1", "-l", "INFO", env=env)
    processes.wait_log("worker", "ready.", timeout=60)

    args = [arg for arg in example.submit if arg not in ("--wait",)]
    result = run_jobs(*args, "--wait", "--timeout", "30s", env=env)
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stderr}\n{processes.log('worker')[-3000:]}"
    )
    job_id = uuid.UUID(result.stdout.splitlines()[0])
    assert wait_for_state(clean, job_id, timeout=1)["state"] == "succeeded"


def schedule_commands(text: str) -> list[list[str]]:
    """The ``jobs schedule`` command lines of the shell blocks, in order, without ``jobs``."""
    found = []
    for fence in FENCE.finditer(text):
        if fence.group(1).lower() in ("python", "py"):
            continue
        for line in fence.group(2).splitlines():
            try:
                words = shlex.split(line.strip().removeprefix("$ "), comments=True)
            except ValueError:
                continue
            if words[:2] == ["jobs", "schedule"]:
                found.append(words[1:])
    return found


def test_schedule_commands_reads_shell_blocks_only():
    text = (
        "Run `jobs schedule list` (not this one).\n\n```console\n"
        "$ jobs schedule add a ping --cron '0 9 1 * mon'  # 09:00\n$ jobs submit ping\n```\n\n"
        "```python\njobs schedule list\n```\n"
        "```bash\njobs schedule pause a\n```\n"
    )
    assert schedule_commands(text) == [
        ["schedule", "add", "a", "ping", "--cron", "0 9 1 * mon"],
        ["schedule", "pause", "a"],
    ]


def test_the_readme_schedule_examples_run_as_printed(clean):
    commands = schedule_commands(README.read_text(encoding="utf-8"))
    actions = [command[1] for command in commands]
    assert {"add", "list", "pause", "remove"} <= set(actions), actions
    added = {command[2]: command for command in commands if command[1] == "add"}
    assert any("--cron" in command for command in added.values()), "no cron example"
    assert any("--every" in command for command in added.values()), "no interval example"

    def forget() -> None:  # only the README's names: a beat of another test may share the ledger
        with db.transaction(clean) as conn:
            conn.execute(sa.delete(schedules).where(schedules.c.name.in_(added)))

    forget()
    try:
        expected: dict[str, bool] = {}  # name -> enabled
        for command in commands:
            result = run_jobs(*command)
            assert result.returncode == 0, (command, result.returncode, result.stderr)
            assert "Traceback" not in result.stderr
            action, name = command[1], (command[2] if len(command) > 2 else "")  # "": `schedule list`
            if action == "add":
                expected[name] = "--paused" not in command
            elif action in ("pause", "resume"):
                expected[name] = action == "resume"
            elif action == "remove":
                expected.pop(name)
        listed = run_jobs("schedule", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        shown = {view["name"]: view["enabled"] for view in json.loads(listed.stdout)["schedules"]}
        assert {name: shown.get(name) for name in added} == {name: expected.get(name) for name in added}
    finally:
        forget()
