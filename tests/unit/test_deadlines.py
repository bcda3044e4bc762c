"""``workers.deadlines``: the batched worker's own clocks, each tried in a process of its own.

``Deadlines`` owns the process's ``SIGALRM`` (pytest-timeout uses it too) and ends the
process at a hard limit, so every case runs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from jobs.batched_pool import EXIT_HARD_LIMIT

pytestmark = pytest.mark.unit

PRELUDE = """
import os, sys, time
sys.path.insert(0, os.getcwd())
from celery.exceptions import SoftTimeLimitExceeded
import workers.deadlines as d
d.WATCH_EVERY = 0.05
d.CANCEL_CHECK = 0.2
"""


def run(body: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=timeout
    )


def test_the_soft_limit_raises_in_the_body_and_is_disarmed_after_it():
    done = run(
        """
        clocks = d.Deadlines(lambda running: None)
        started = time.monotonic()
        try:
            with clocks.running("j1", None, soft=0.3, hard=30):
                time.sleep(5)
        except SoftTimeLimitExceeded:
            print("soft after %.1f" % (time.monotonic() - started))
        with clocks.running("j2", None, soft=0.2, hard=30):
            pass
        time.sleep(0.4)  # a body that returned in time leaves no alarm behind
        print("no alarm")
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0].startswith("soft after ")
    assert 0.25 <= float(lines[0].split()[-1]) < 2.0
    assert lines[1] == "no alarm"


def test_the_soft_shutdown_window_stops_the_running_body():
    done = run(
        """
        clocks = d.Deadlines(lambda running: None)
        try:
            with clocks.running("j1", None, soft=30, hard=60):
                clocks.shutdown(0.3)
                try:
                    time.sleep(5)
                except Exception:
                    print("a body's except Exception must not swallow it")
        except d.ShutdownExpired:
            print("handed back")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "handed back"


def test_a_cancelled_job_is_stopped_a_long_body_is_looked_up_not_a_short_one():
    done = run(
        """
        asked = []
        def is_cancelled(job_id):
            asked.append(job_id)
            return job_id == "cancelled"
        clocks = d.Deadlines(lambda running: None, is_cancelled)
        with clocks.running("short", None, soft=30, hard=60):
            time.sleep(0.05)
        print("asked", asked)
        try:
            with clocks.running("cancelled", None, soft=30, hard=60):
                time.sleep(5)
        except d.JobCancelled:
            print("stopped")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["asked []", "stopped"]


def test_the_hard_limit_records_then_ends_the_process():
    done = run(
        """
        def on_hard_limit(running):
            print("hard limit of", running.job_id, flush=True)
        clocks = d.Deadlines(on_hard_limit)
        with clocks.running("j1", None, soft=0.1, hard=0.4):
            while True:  # swallows the soft limit, as a stuck body would
                try:
                    time.sleep(1)
                except SoftTimeLimitExceeded:
                    pass
        print("never reached")
        """
    )
    assert done.returncode == EXIT_HARD_LIMIT, done.stderr
    assert done.stdout.strip() == "hard limit of j1"
