"""``jobs dev``: the whole platform in the foreground, a first ping job, and a clean Ctrl-C."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fixtures import ROOT, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance

#: ``jobs dev`` gives its children this long to stop before it kills them.
GRACE = 40.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def session_members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (``jobs dev`` runs in its own session, and so do its children)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(session) == sid and state != "Z":
            members.append(int(entry.name))
    return members


class Dev:
    """``jobs dev`` started in a scratch directory (Flower writes its state file in the working directory)."""

    def __init__(self, workdir: Path, flower_port: int) -> None:
        self.flower_port = flower_port
        self.log_path = workdir / "dev.log"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobs", "dev"],
                cwd=workdir,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": path,
                    "JOBS_FLOWER_PORT": str(flower_port),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"jobs dev did not print {pattern!r}:\n{self.output()[-4000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def dev(clean: object, tmp_path: Path) -> Iterator[Dev]:
    started = Dev(tmp_path, flower_port=free_port())
    try:
        yield started
    finally:
        started.kill()


def test_dev_runs_a_ping_then_stops_cleanly_on_ctrl_c(dev, clean):
    found = dev.wait_for(r"job (\S+) succeeded; see it with: jobs status \1", timeout=90)
    job_id = uuid.UUID(found.group(1))
    assert wait_for_state(clean, job_id, timeout=1)["state"] == "succeeded"

    # Flower is up on the port given, behind the printed credentials.
    flower = dev.wait_for(r"Flower: (http://\S+)\s+\(user (\S+), password (\S+)\)", timeout=5)
    url, user, password = flower.groups()
    assert url == f"http://127.0.0.1:{dev.flower_port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    refused.value.close()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    children = [pid for pid in session_members(dev.process.pid) if pid != dev.process.pid]
    assert len(children) >= 3, "worker, beat and Flower (and the worker's pool) run beside jobs dev"

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    started = time.monotonic()
    os.killpg(dev.process.pid, signal.SIGINT)
    try:
        code = dev.process.wait(timeout=GRACE + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"jobs dev still running {GRACE + 5:g}s after Ctrl-C:\n{dev.output()[-3000:]}")
    elapsed = time.monotonic() - started

    assert code == 0, dev.output()[-3000:]
    assert elapsed < GRACE, f"took {elapsed:.1f}s: something had to be killed"
    assert "did not stop" not in dev.output()
    assert "stopped worker, beat and Flower" in dev.output()
    deadline = time.monotonic() + 5
    while (left := session_members(dev.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes of jobs dev still alive: {left}"


def test_dev_with_postgres_unreachable_exits_3_naming_the_url():
    url = "postgresql://postgres:hunter2@127.0.0.1:1/jobs_unreachable_test"
    result = run_jobs("dev", env={"JOBS_DATABASE_URL": url}, timeout=30)

    assert result.returncode == 3, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert (
        "PostgreSQL is unreachable at postgresql+psycopg://postgres:***@127.0.0.1:1/jobs_unreachable_test"
        in (lines[0])
    )
    assert "hunter2" not in result.stderr
