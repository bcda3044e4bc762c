"""``jobs.batched_pool.Supervisor`` with stand-in worker processes (tiny Python programs)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from jobs import batched_pool
from jobs.batched_pool import EXIT_HARD_LIMIT, Slot, Supervisor, group_of, node_names
from jobs.cli.health import node_pattern

pytestmark = pytest.mark.unit


def program(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def supervisor(code: str, ended: list[str], concurrency: int = 1) -> Supervisor:
    pool = Supervisor(1.0, concurrency, lambda node: program(code), dict(os.environ))
    pool._end_leases = lambda slot: ended.append(slot.node)  # type: ignore[method-assign]  # no ledger here
    return pool


def exited(pool: Supervisor, slot: Slot, timeout: float = 20.0) -> None:
    """Look at the slot until its process has exited and been seen to."""
    deadline = time.monotonic() + timeout
    while slot.process is not None:
        assert time.monotonic() < deadline, "the stand-in worker did not exit"
        pool._look(slot, time.monotonic())
        time.sleep(0.02)


def test_node_names_are_per_slot_and_new_at_every_start():
    first, again = node_names("reports@%h", 2), node_names("reports@%h", 2)
    assert first.startswith("reports-2.")
    assert first.endswith("@" + socket.gethostname())  # %h resolved: the ledger's worker column
    assert first != again  # a restarted process is a new incarnation
    assert node_names(None, 1).startswith(f"worker-{os.getpid()}-1.")


def test_jobs_health_worker_node_finds_the_processes_of_a_batched_worker():
    host = socket.gethostname()
    pattern = node_pattern(f"reports@{host}")
    assert re.match(pattern, node_names("reports@%h", 3))  # -P batched: any of its processes
    assert re.match(pattern, f"reports@{host}")  # any other pool: the node itself
    for other in (f"reports-eu@{host}", f"reports-2.abcd@{host}x", "reports@elsewhere", f"xreports@{host}"):
        assert not re.match(pattern, other)
    assert re.match(node_pattern("a.b+c@h"), "a.b+c-1.00ff@h")  # the name is matched as text
    assert not re.match(node_pattern("a.b+c@h"), "axbbc@h")


def test_a_process_name_leads_back_to_its_worker_name():
    host = socket.gethostname()
    assert group_of(node_names("reports@%h", 12)) == f"reports@{host}"
    assert group_of(node_names("a-1.00ff@h", 1)) == "a-1.00ff@h"  # only the last suffix is the slot's
    assert group_of(node_names(None, 1)) == f"worker-{os.getpid()}@{host}"
    others = ("reports@h", "reports-0.abcd@h", "reports-1.abcde@h", "reports-1.ABCD@h", "reports-x.abcd@h")
    for other in others:
        assert group_of(other) is None


def test_a_crashing_process_has_its_leases_ended_and_restarts_later_each_time():
    ended: list[str] = []
    pool = supervisor("import sys; sys.exit(3)", ended)
    slot = pool.slots[0]
    pauses = []
    for _ in range(4):
        pool._start(slot)
        node = slot.node
        exited(pool, slot)
        assert ended[-1] == node
        pauses.append(round(slot.restart_at - time.monotonic()))
    assert slot.exits == [3, 3, 3, 3]
    assert pauses == [0, 2, 4, 8]  # one quick failure restarts at once, then 2, 4, 8 s


def test_a_process_that_says_why_it_stopped_is_replaced_at_once_without_touching_leases():
    ended: list[str] = []
    for code in (0, EXIT_HARD_LIMIT):
        pool = supervisor(f"import sys; sys.exit({code})", ended)
        slot = pool.slots[0]
        pool._start(slot)
        exited(pool, slot)
        assert (slot.failures, slot.exits) == (0, [code])
        assert slot.restart_at <= time.monotonic()
    assert ended == []


def test_sigterm_is_forwarded_once_and_the_supervisor_exits_with_the_workers_status():
    ended: list[str] = []
    code = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\ntime.sleep(60)\n"
    pool = supervisor(code, ended, concurrency=2)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    try:
        for slot in pool.slots:
            pool._start(slot)
        time.sleep(1.0)  # the stand-ins have installed their handler
        pool._asked_to_stop(signal.SIGTERM, None)
        for slot in pool.slots:
            exited(pool, slot)
        assert [slot.exits for slot in pool.slots] == [[0], [0]]
        assert ended == []
        for slot in pool.slots:  # stopping: nothing is started again
            pool._look(slot, time.monotonic() + 60)
            assert slot.process is None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_a_worker_that_outlives_the_window_is_killed_and_its_leases_ended(monkeypatch):
    monkeypatch.setattr(batched_pool, "SHUTDOWN_GRACE", 0.5)
    ended: list[str] = []
    pool = supervisor(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)", ended
    )
    previous = signal.getsignal(signal.SIGTERM)
    try:
        slot = pool.slots[0]
        pool._start(slot)
        time.sleep(1.0)
        pool._asked_to_stop(signal.SIGTERM, None)
        assert pool.stop_deadline - time.monotonic() < 2.0  # the 1 s window plus the grace
        time.sleep(pool.stop_deadline - time.monotonic() + 0.1)
        pool._kill(slot)
        exited(pool, slot)
        assert slot.exits == [-signal.SIGKILL]
        assert ended == [slot.node]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_supervisor_loads_nothing_heavy_until_a_process_dies():
    """``python -m jobs.batched_pool`` stays small: no settings (pydantic), ledger or Celery."""
    code = (
        "import sys\n"
        "from jobs import batched_pool, logs\n"
        "plan = batched_pool.Plan(2, ['true', batched_pool.NODE], None, 5.0, 'json', 'INFO')\n"
        "plan = batched_pool.Plan.from_json(plan.to_json())\n"
        "logs.plain(plan.log_format, plan.loglevel)\n"
        "batched_pool.Supervisor(plan.soft_shutdown_timeout, plan.concurrency, plan.argv_for, {})\n"
        "heavy = {'pydantic', 'sqlalchemy', 'celery', 'psycopg'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    env = {key: value for key, value in os.environ.items() if key != batched_pool.PLAN}
    started = [sys.executable, "-m", "jobs.batched_pool"]
    done = subprocess.run(started, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "JOBS_BATCHED_PLAN is not set: start a batched worker with `jobs worker -P batched`"
    ]
