"""``jobs queues``, ``workers``, ``top`` and ``metrics`` against a running platform (worker and leader).

``jobs top`` is also driven through a real pseudo-terminal of 80x24, as over
SSH: it draws, and ``q`` quits it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jobs import wire
from jobs.settings import Settings
from tests.support.fixtures import ROOT, Processes, run_jobs, run_jobs_together, wait_for_state
from tests.support.servers import free_port

pytestmark = pytest.mark.acceptance


def submit(*args: str) -> str:
    result = run_jobs("submit", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def long_job(clean: Settings, platform: Processes) -> Iterator[str]:
    """A job seen running, that runs until cancelled when the test ends (however long it looks)."""
    job = submit("test.hold", "-p", f"key={uuid.uuid4()}")
    try:
        wait_for_state(clean, uuid.UUID(job), ("running",), timeout=60)
        yield job
    finally:
        run_jobs("cancel", job)


def both(*args: str) -> tuple[dict[str, Any], str]:
    """The ``--json`` report and the human text of one read-only command, run side by side."""
    as_json, human = run_jobs_together((*args, "--json"), args)
    assert as_json.returncode == 0, as_json.stderr
    assert human.returncode == 0, human.stderr
    return json.loads(as_json.stdout), human.stdout


def test_queues_show_the_ledger_redis_and_consumers(clean, platform):
    submit("ping", "--queue", "nowhere")
    submit("ping", "--queue", "nowhere", "--priority", "0")

    report, human = both("queues")

    by_name = {queue["queue"]: queue for queue in report["queues"]}
    nowhere = by_name["nowhere"]
    assert nowhere["ledger"]["states"] == {"queued": 2}
    assert nowhere["redis"] == {"ready": 2, "reserved": 0}
    assert nowhere["mismatch"] is False
    assert nowhere["consumers"] == []
    assert nowhere["ledger"]["oldest_waiting_seconds"] is not None
    assert [name.startswith("worker-") for name in by_name["default"]["consumers"]] == [True]
    row = next(line for line in human.splitlines() if line.startswith("nowhere"))
    assert row.split()[:8] == ["nowhere", "2", "0", "2", "0", "0", "0", "0"]  # queued, held, redis, …


def test_queues_show_a_mismatch_between_the_ledger_and_redis(clean, platform, broker):
    submit("ping", "--queue", "nowhere")
    # The message is lost (every priority list of the queue emptied); the ledger still has the job.
    broker.delete(*(wire.queue_key("nowhere", priority) for priority in range(10)))

    report, human = both("queues")

    nowhere = next(queue for queue in report["queues"] if queue["queue"] == "nowhere")
    assert (nowhere["ledger"]["states"], nowhere["redis"]["ready"], nowhere["mismatch"]) == (
        {"queued": 1},
        0,
        True,
    )
    assert "≠0" in human
    assert "Redis holds a different number of messages" in human


def test_workers_show_pool_queues_and_running_jobs(long_job):
    job = long_job
    report, human = both("workers")

    [worker] = [worker for worker in report["workers"] if worker["state"] == "alive"]
    assert worker["pool"] == "prefork"
    assert worker["concurrency"] == 2
    assert "default" in worker["queues"]
    assert worker["uptime"] > 0
    assert [(active["id"], active["kind"]) for active in worker["active"]] == [(job, "test.hold")]
    assert "prefork x2" in human
    assert job in human


def test_top_once_and_json(long_job):
    job = long_job
    as_json, once = run_jobs_together(("top", "--json"), ("top", "--once"))
    report, text = json.loads(as_json.stdout), once.stdout

    assert report["leader"].startswith("jobs-leader:")
    assert [running["id"] for running in report["running"]] == [job]
    assert len([worker for worker in report["workers"] if worker["state"] == "alive"]) == 1
    assert "jobs top" in text
    assert job[:8] in text
    assert "test.hold" in text
    assert "leader " in text
    assert "NONE" not in text


def read_screen(fd: int, until: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while until not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def test_top_runs_live_in_an_80x24_terminal_and_q_quits(clean, platform):
    submit("ping", "--queue", "nowhere")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs", "top"],
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"},
        start_new_session=True,
    )
    os.close(follower)
    try:
        screen = read_screen(leader, b"nowhere", timeout=60)
        assert b"jobs top" in screen, screen[-2000:]
        assert b"q quits" in screen
        time.sleep(1.5)  # at least one more frame
        os.write(leader, b"q")
        assert process.wait(timeout=30) == 0
        rest = read_screen(leader, b"\x00never", timeout=1)
        assert b"Traceback" not in screen + rest
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(leader)


def test_the_metrics_exporter_serves_the_ledger(clean, platform, tmp_path):
    submit("ping", "--queue", "nowhere")
    port = free_port()
    exporter = Processes(tmp_path)
    exporter.start("metrics", "metrics", "--port", str(port))
    try:
        exporter.wait_log("metrics", f"http://127.0.0.1:{port}/metrics", timeout=60)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert exporter.stop("metrics") == 0
    finally:
        exporter.stop_all()
    assert 'jobs_jobs{queue="nowhere",state="queued"} 1.0' in text
    assert "jobs_leader_up 1.0" in text
    assert "jobs_ledger_up 1.0" in text
