"""``jobs dev``: the whole platform in the foreground, a first ping job, and Ctrl-C.

One Ctrl-C lets running jobs finish, then everything stops; a second hands them back at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from tests.support.fixtures import ROOT, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance

#: JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT's default: one Ctrl-C used to wait it out whole.
SOFT_SHUTDOWN = 30.0
CREDENTIALS = ".flower-dev-credentials"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def session_members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (``jobs dev`` leads its own session; its children stay in it)."""
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
    """``jobs dev`` started in a scratch directory (Flower writes its state file in the working directory).

    It leads a new session and process group, as a shell's foreground job does: ``ctrl_c`` sends
    SIGINT to that process group, which is what a terminal does on Ctrl-C.
    """

    def __init__(self, workdir: Path, flower_port: int) -> None:
        self.workdir = workdir
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
            found = re.search(pattern, self.output(), re.MULTILINE)
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"jobs dev did not print {pattern!r}:\n{self.output()[-4000:]}")

    def running(self) -> None:
        """Wait until the platform runs (the first ping job is done)."""
        self.wait_for(r"^the platform is running", timeout=120)

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def exit_code(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"jobs dev still running {timeout:g}s after Ctrl-C:\n{self.output()[-4000:]}")

    def assert_clean_exit(self) -> None:
        """No traceback, no process left behind, no file but Flower's state and the kept credentials."""
        output = self.output()
        assert "Traceback" not in output, output[-4000:]
        assert "stopped worker, beat and Flower" in output
        deadline = time.monotonic() + 5
        while (left := session_members(self.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], f"processes of jobs dev still alive: {left}"
        files = sorted(path.name for path in self.workdir.iterdir())
        assert [name for name in files if ".tmp" in name] == [], files
        assert set(files) <= {
            "dev.log",
            CREDENTIALS,
            ".flower-dev.db",
            *(f".flower-dev.db.{x}" for x in FLOWER_DBM),
        }, files

    def kill(self) -> None:
        """Kill ``jobs dev`` and its children (each runs in its own process group, in this session)."""
        for pid in session_members(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


#: The files Python's dbm modules make for Flower's ``.flower-dev.db`` (dbm.dumb here).
FLOWER_DBM = ("bak", "dat", "dir", "db", "pag")


@pytest.fixture
def dev(clean: object, tmp_path: Path) -> Iterator[Dev]:
    started = Dev(tmp_path, flower_port=free_port())
    try:
        yield started
    finally:
        started.kill()


def without_this_venv_on_path() -> dict[str, str]:
    """The environment of a user's other terminal: the virtualenv is not on PATH (``uv run`` put it there)."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return {**os.environ, "PATH": path, "VIRTUAL_ENV": ""}


def test_dev_runs_a_ping_then_stops_cleanly_on_ctrl_c(dev, clean, tmp_path):
    found = dev.wait_for(r"job (\S+) succeeded; see it with: (.+) status \1$", timeout=120)
    job_id = uuid.UUID(found.group(1))
    assert wait_for_state(clean, job_id, timeout=1)["state"] == "succeeded"

    # The printed command works from another terminal, in another directory, without the venv on PATH.
    shown = subprocess.run(
        [*shlex.split(found.group(2)), "status", str(job_id)],
        cwd=tmp_path.parent,
        env=without_this_venv_on_path(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout

    # Flower is up on the port given, behind the printed credentials, which are kept for the next start.
    flower = dev.wait_for(
        r"Flower: (http://\S+)\s+\(user (\S+), password ([^;\s]+); kept in (\S+);", timeout=5
    )
    url, user, password, kept = flower.groups()
    assert url == f"http://127.0.0.1:{dev.flower_port}"
    assert kept == CREDENTIALS
    assert f"JOBS_FLOWER_PASSWORD='{password}'" in (tmp_path / CREDENTIALS).read_text()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    refused.value.close()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    # jobs doctor, from another terminal with no Flower credentials, finds this Flower.
    doctor = run_jobs(
        "doctor", "--json", env={"JOBS_FLOWER_PORT": str(dev.flower_port), "JOBS_FLOWER_USER": ""}
    )
    checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
    assert checks["flower"]["status"] == "ok", checks["flower"]

    children = [pid for pid in session_members(dev.process.pid) if pid != dev.process.pid]
    assert len(children) >= 3, "worker, beat and Flower (and the worker's pool) run beside jobs dev"

    # Ctrl-C with nothing running: every process stops at once, warm.
    started = time.monotonic()
    dev.ctrl_c()
    code = dev.exit_code(timeout=SOFT_SHUTDOWN)
    elapsed = time.monotonic() - started

    assert code == 0, dev.output()[-3000:]
    assert "stopping: no job is running (Ctrl-C again to stop at once)" in dev.output()
    assert "Cold shutdown" not in dev.output()
    assert elapsed < 15, f"an idle platform took {elapsed:.1f}s to stop"
    dev.assert_clean_exit()


def test_one_ctrl_c_lets_the_running_job_finish_then_stops(dev, clean, producer):
    dev.running()
    job_id = producer.submit("test.work", {"key": "ctrl-c", "sleep": 6.0})
    wait_for_state(clean, job_id, ("running",), timeout=30)

    started = time.monotonic()
    dev.ctrl_c()
    dev.wait_for(r"^stopping: waiting for 1 running job \(Ctrl-C again to stop at once\)$", timeout=10)
    code = dev.exit_code(timeout=SOFT_SHUTDOWN + 30)
    elapsed = time.monotonic() - started

    assert code == 0, dev.output()[-3000:]
    assert wait_for_state(clean, job_id, timeout=1)["state"] == "succeeded"
    assert elapsed < SOFT_SHUTDOWN - 5, f"took {elapsed:.1f}s: the job had at most 6 s left"
    assert "Cold shutdown" not in dev.output()
    dev.assert_clean_exit()


def queued_copies(broker: redis.Redis, job_id: uuid.UUID) -> int:
    """Messages of this job waiting in the test broker's queues (kombu keeps one list per priority)."""
    copies = 0
    for key in broker.scan_iter(count=1000):
        if broker.type(key) == b"list":
            copies += sum(str(job_id).encode() in message for message in broker.lrange(key, 0, -1))
    return copies


def test_a_second_ctrl_c_hands_the_running_job_back_at_once(dev, clean, producer, broker, tmp_path):
    dev.running()
    job_id = producer.submit("test.work", {"key": "ctrl-c-twice", "sleep": 60.0})
    wait_for_state(clean, job_id, ("running",), timeout=30)

    started = time.monotonic()
    dev.ctrl_c()
    dev.wait_for(r"^stopping: waiting for 1 running job", timeout=10)
    dev.ctrl_c()
    code = dev.exit_code(timeout=SOFT_SHUTDOWN)
    elapsed = time.monotonic() - started

    assert code == 0, dev.output()[-3000:]
    assert elapsed < 20, f"took {elapsed:.1f}s to stop at once"
    assert "stopping at once: running jobs go back to their queue" in dev.output()
    # Handed back, not lost: the ledger lets the next worker claim it at once, and its message is queued.
    row = wait_for_state(clean, job_id, ("running", "retrying", "queued"), timeout=1)
    assert row["state"] != "failed"
    if row["state"] == "running":
        assert row["lease_until"] <= datetime.now(UTC), "the lease was released"
    assert queued_copies(broker, job_id) == 1
    dev.assert_clean_exit()


def test_ctrl_c_while_the_platform_starts_stops_it_without_a_traceback(dev, clean):
    dev.wait_for(r"^ledger schema at ", timeout=60)
    dev.ctrl_c()
    code = dev.exit_code(timeout=SOFT_SHUTDOWN)

    assert code == 0, dev.output()[-3000:]
    dev.assert_clean_exit()


def test_dev_uses_the_credentials_kept_by_an_earlier_start(clean, tmp_path):
    (tmp_path / CREDENTIALS).write_text("JOBS_FLOWER_USER=dana\nJOBS_FLOWER_PASSWORD=kept-from-before\n")
    started = Dev(tmp_path, flower_port=free_port())
    try:
        started.wait_for(r"Flower: \S+\s+\(user dana, password kept-from-before;", timeout=120)
        token = base64.b64encode(b"dana:kept-from-before").decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{started.flower_port}", headers={"Authorization": f"Basic {token}"}
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == 200
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        started.ctrl_c()
        assert started.exit_code(timeout=SOFT_SHUTDOWN) == 0
    finally:
        started.kill()


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
