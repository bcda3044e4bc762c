"""The README's worked example of adding a kind works as printed.

The section whose heading mentions "Adding a kind" must hold a ``python`` code
block (the module declaring the kind) and a shell block with the ``jobs
submit`` command that runs it. The test writes the module to a scratch
directory, starts a worker with ``JOBS_KIND_MODULES`` naming it, runs the
README's ``jobs submit`` line with ``--wait``, and expects the job to succeed.
"""

from __future__ import annotations

import os
import re
import shlex
import uuid
from dataclasses import dataclass

import pytest

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
