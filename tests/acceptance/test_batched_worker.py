"""The batched profiles, real workers, a real leader, the real ledger: ``jobs worker -P batched``
(supervised single-process workers) and ``jobs worker --batches`` (batches in the prefork pool)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import sqlalchemy as sa

from jobs import db
from jobs.schema import job_attempts, jobs
from jobs.settings import Settings
from tests.support.fixtures import Processes, clear_broker, effects, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance

#: How each profile starts with two processes running batches, and how many "ready." lines that logs.
PROFILES = {
    "batched": (("worker", "-P", "batched", "-c", "2", "-l", "INFO"), 2),
    "pooled": (("worker", "-P", "prefork", "--batches", "-c", "2", "-l", "INFO"), 1),
}
BATCHED = PROFILES["batched"][0]


def wait_ready(processes: Processes, name: str, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` worker processes of ``name`` logged that they are ready."""
    deadline = time.monotonic() + timeout
    while processes.log(name).count(" ready.") < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not {count} ready in {timeout}s:\n{processes.log(name)[-3000:]}")
        if processes.running[name].poll() is not None:
            raise AssertionError(f"{name} exited early:\n{processes.log(name)[-3000:]}")
        time.sleep(0.1)


def workers_of(processes: Processes, name: str) -> list[psutil.Process]:
    return psutil.Process(processes.running[name].pid).children()


@pytest.fixture(scope="module", params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def batched(
    ledger_db: Settings, tmp_path_factory: pytest.TempPathFactory, profile: str, broker: redis.Redis
) -> Iterator[Processes]:
    """Two processes running batches (under their supervisor, or in the prefork pool) and a
    leader, for a module of tests."""
    clear_broker(broker)  # before the worker starts: an earlier test's messages are not its jobs
    started = Processes(tmp_path_factory.mktemp(profile))
    argv, ready = PROFILES[profile]
    try:
        started.start("worker", *argv)
        started.start("beat", "beat", "-l", "INFO")
        wait_ready(started, "worker", ready)
        started.wait_log("beat", "is now the leader")
        yield started
    finally:
        started.stop_all()


def test_a_burst_is_claimed_and_recorded_in_batches(batched, producer, clean, broker, profile):
    ids = producer.submit_many("ping", [{"message": f"m{n}"} for n in range(300)])
    rows = [wait_for_state(clean, job_id, timeout=60) for job_id in ids]
    deadline = time.monotonic() + 30  # every message acknowledged (a batch's in one round trip)
    while broker.hlen("unacked") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.hlen("unacked") == 0
    assert {(row["state"], row["attempt"]) for row in rows} == {("succeeded", 1)}
    assert rows[0]["result"]["message"] == "m0"
    with db.transaction(clean) as conn:
        history = conn.execute(
            sa.select(job_attempts.c.outcome, sa.func.count()).group_by(job_attempts.c.outcome)
        ).all()
        # One claim statement stamps every job of its batch with the same started_at.
        claims = conn.execute(sa.select(sa.func.count(sa.distinct(jobs.c.started_at)))).scalar_one()
        nodes = conn.execute(sa.select(sa.func.count(sa.distinct(jobs.c.worker)))).scalar_one()
    assert dict(history) == {"succeeded": 300}
    assert claims < 300
    if profile == "pooled":  # one Celery node, whichever pool process ran the batch
        assert nodes == 1
    print(f"300 jobs claimed in {claims} statements")
    assert batched.log("worker").count("succeeded in") >= 300


def test_errors_retries_and_session_bodies_are_recorded_as_on_the_single_job_path(batched, producer, clean):
    failing = producer.submit("test.fail", {})
    flaky = producer.submit("test.flaky", {"succeed_on": 2})
    effect = producer.submit("test.effect", {"key": "batched-effect"})
    undone = producer.submit("test.effect", {"key": "batched-undone", "fail_after_write": True})
    pings = producer.submit_many("ping", [{}] * 20)

    assert (wait_for_state(clean, failing, timeout=60)["state"]) == "failed"
    flaky_row = wait_for_state(clean, flaky, timeout=60)
    assert (flaky_row["state"], flaky_row["attempt"], flaky_row["result"]) == ("succeeded", 2, {"attempt": 2})
    assert wait_for_state(clean, effect, timeout=60)["state"] == "succeeded"
    assert [row["attempt"] for row in effects(clean, "batched-effect")] == [1]
    assert wait_for_state(clean, undone, timeout=60)["state"] == "failed"
    assert effects(clean, "batched-undone") == []  # each failed attempt's write rolled back
    assert {wait_for_state(clean, job_id, timeout=60)["state"] for job_id in pings} == {"succeeded"}
    with db.transaction(clean) as conn:
        outcomes = conn.execute(
            sa.select(job_attempts.c.attempt, job_attempts.c.outcome)
            .where(job_attempts.c.job_id == failing)
            .order_by(job_attempts.c.attempt)
        ).all()
    assert [tuple(row) for row in outcomes] == [(1, "error"), (2, "error"), (3, "error")]


def test_the_soft_time_limit_raises_in_the_body(batched, producer, clean):
    job = producer.submit("test.sleep", {"seconds": 20, "steps": 200})
    row = wait_for_state(clean, job, timeout=30)
    assert (row["state"], row["error"]["type"]) == ("failed", "SoftTimeLimitExceeded")
    assert row["error"]["message"].startswith("time limit")


def test_the_hard_time_limit_ends_the_process_and_the_supervisor_replaces_it(
    batched, producer, clean, profile
):
    before = {process.pid for process in workers_of(batched, "worker")}
    job = producer.submit("test.hang", {"seconds": 30})
    row = wait_for_state(clean, job, timeout=40)
    assert (row["state"], row["error"]["type"]) == ("failed", "TimeLimitExceeded")
    assert "hard limit" in row["error"]["message"]
    if profile == "batched":
        batched.wait_log("worker", "stopped a job at its hard time limit; starting a new one", timeout=30)
        wait_ready(batched, "worker", 3)
    else:  # the pool replaces its process; the main process records the attempt, as for a pool child
        batched.wait_log("worker", "was lost in pool process", timeout=30)
        lines = [line for line in batched.log("worker").splitlines() if str(job) in line]
        (line,) = lines  # one line for the attempt, as a per-job pool child's
        assert "ERROR/MainProcess]" in line
        assert "TimeLimitExceeded: time limit: killed after" in line
    deadline = time.monotonic() + 30
    while len(after := {process.pid for process in workers_of(batched, "worker")}) != 2:
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    assert len(before - after) == 1
    assert {
        wait_for_state(clean, j, timeout=30)["state"] for j in producer.submit_many("ping", [{}] * 10)
    } == {"succeeded"}


def test_a_killed_worker_process_is_replaced_and_its_job_runs_again(batched, producer, clean, profile):
    job = producer.submit("test.work", {"key": f"{profile}-crash", "crash_on_attempt": 1})
    row = wait_for_state(clean, job, timeout=60)
    assert (row["state"], row["attempt"]) == ("succeeded", 2)
    assert [effect["attempt"] for effect in effects(clean, f"{profile}-crash")] == [2]
    lost = {
        "batched": "was killed by signal 9; ending its jobs' leases",
        "pooled": "was lost in pool process",
    }
    assert lost[profile] in batched.log("worker")


def test_cancelling_a_running_job_stops_its_body(batched, producer, clean, tmp_path: Path):
    gate = tmp_path / "gate"  # never opened: the body would wait a minute, and does not look
    job, _ = gate_running(producer, clean, gate)
    cancelled = run_jobs("cancel", str(job))
    assert cancelled.returncode == 0, cancelled.stderr
    batched.wait_log(
        "worker", f"job {job} test.gate attempt 1/3 on queue default cancelled while running", timeout=15
    )
    assert wait_for_state(clean, job)["state"] == "cancelled"


def gate_running(producer: Any, clean: Settings, gate: Path) -> tuple[uuid.UUID, str]:
    """Submit a ``test.gate`` body that waits for ``gate``, wait until it runs; its job and the
    node the ledger names for it."""
    job = producer.submit("test.gate", {"path": str(gate), "seconds": 60})
    deadline = time.monotonic() + 30
    while not Path(f"{gate}.started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with db.transaction(clean) as conn:
        node = conn.execute(sa.select(jobs.c.worker).where(jobs.c.id == job)).scalar_one()
    return job, str(node)


def busy_heartbeats(app: Any, node: str, seconds: float = 20.0) -> list[object]:
    """The ``active`` counts of ``node``'s heartbeats, until one counts a running body or
    ``seconds`` pass (bounded whatever the other processes send: each of their events would
    restart ``capture``'s own timeout)."""
    heard: list[object] = []
    until = time.monotonic() + seconds

    def on_event(event: dict[str, object]) -> None:
        if event.get("type") == "worker-heartbeat" and event.get("hostname") == node:
            heard.append(event.get("active"))
        if 1 in heard or time.monotonic() > until:
            raise KeyboardInterrupt  # stop capturing

    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": on_event})
        with contextlib.suppress(KeyboardInterrupt, TimeoutError, OSError):
            receiver.capture(limit=None, timeout=5)
    return heard


def test_a_busy_worker_process_answers_remote_control_and_sends_heartbeats(
    batched, producer, clean, tmp_path: Path, profile
):
    """The body runs in the process's consumer thread; pings, inspect commands and heartbeats do not
    wait for it (workers.mailbox), and a command that changes the consumer is answered after it."""
    from celery import Celery

    if profile == "pooled":
        pytest.skip("-P batched only: with --batches the bodies run in pool processes, not the consumer's")

    gate = tmp_path / "gate"
    job, node = gate_running(producer, clean, gate)
    app = Celery("operator", broker=clean.broker_url, set_as_current=False)
    revoked: list[Any] = []
    try:
        heard = busy_heartbeats(app, node)
        assert 1 in heard, f"no heartbeat from {node} counted its running body; heard active={heard}"
        health = run_jobs("health", "worker", "--node", node, "--timeout", "5")
        assert health.returncode == 0, health.stdout + health.stderr
        # The supervisor's name (worker-PID@HOST, as with -n) finds its processes too.
        supervisor = f"worker-{batched.running['worker'].pid}@{node.partition('@')[2]}"
        health = run_jobs("health", "worker", "--node", supervisor, "--timeout", "5")
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.startswith("worker healthy: worker-"), health.stdout
        active = app.control.inspect(destination=[node], timeout=5).active() or {}
        assert [task["id"] for task in active.get(node, [])] == [str(job)]
        listed = run_jobs("workers", "--json")
        assert listed.returncode == 0, listed.stderr
        # Its processes are one worker under the supervisor's name (jobs.fleet), 1 of 2 busy.
        listing = {(w["name"], w["state"]): w for w in json.loads(listed.stdout)["workers"]}
        worker = listing[supervisor, "alive"]  # a process killed by an earlier test is listed apart
        assert (worker["pool"], worker["concurrency"], worker["state"]) == ("batched", 2, "alive")
        assert [(entry["id"], entry["kind"]) for entry in worker["active"]] == [(str(job), "test.gate")]
        assert node in [process["name"] for process in worker["processes"]]
        human = run_jobs("workers")
        assert human.returncode == 0, human.stderr
        assert re.search(rf"{re.escape(supervisor)} +alive .* batched x2 +1/2 ", human.stdout), human.stdout
        # The ledger names the process: `jobs explain` finds it among the live workers' processes.
        explained = run_jobs("explain", str(job))
        assert explained.returncode == 0, explained.stderr
        assert f"running now on {node}" in explained.stdout, explained.stdout
        heard = busy_heartbeats(app, node)  # and still, after those commands
        assert 1 in heard, f"no heartbeat from {node} counted its running body; heard active={heard}"
        # revoke changes the worker's state: it waits for the body, and its reply follows.
        asking = threading.Thread(
            target=lambda: revoked.append(
                app.control.revoke(str(uuid.uuid4()), destination=[node], reply=True, timeout=30)
            )
        )
        asking.start()
        asking.join(1.0)
        assert asking.is_alive()
    finally:
        gate.write_text("open")
    asking.join(30)
    assert revoked
    assert node in revoked[0][0]
    assert wait_for_state(clean, job)["state"] == "succeeded"
    # Idle, the consumer's thread answers such a command at once again.
    assert app.control.revoke(str(uuid.uuid4()), destination=[node], reply=True, timeout=5)


def test_a_body_running_in_a_pool_process_is_listed_as_active(
    batched, producer, clean, tmp_path: Path, profile
):
    """``--batches``: a batch's body is not a Celery request; the main process lists it from its
    pool process's record, so ``inspect active``, ``jobs workers`` and ``jobs explain`` see it."""
    from celery import Celery

    if profile != "pooled":
        pytest.skip("--batches only: -P batched lists its body from the process itself (above)")
    gate = tmp_path / "gate"
    job, node = gate_running(producer, clean, gate)
    app = Celery("operator", broker=clean.broker_url, set_as_current=False)
    try:
        active = app.control.inspect(destination=[node], timeout=5).active() or {}
        listed = active.get(node, [])
        assert [(task["id"], task["name"]) for task in listed] == [(str(job), "test.gate")]
        assert listed[0]["worker_pid"] in {process.pid for process in workers_of(batched, "worker")}
        workers = run_jobs("workers", "--json")
        assert workers.returncode == 0, workers.stderr
        (worker,) = [w for w in json.loads(workers.stdout)["workers"] if w["name"] == node]
        assert (worker["pool"], worker["concurrency"]) == ("prefork", 2)
        assert [(entry["id"], entry["kind"]) for entry in worker["active"]] == [(str(job), "test.gate")]
        explained = run_jobs("explain", str(job))
        assert explained.returncode == 0, explained.stderr
        assert f"running now on {node}" in explained.stdout, explained.stdout
    finally:
        gate.write_text("open")
    assert wait_for_state(clean, job)["state"] == "succeeded"
    assert not (app.control.inspect(destination=[node], timeout=5).active() or {}).get(node)


def test_plain_celery_messages_take_the_single_job_path(batched, clean):
    from celery import Celery

    adopted = uuid.uuid4()
    outsider = Celery("outsider", broker=clean.broker_url, set_as_current=False)
    outsider.send_task("ping", kwargs={"message": "plain"}, task_id=str(adopted), queue="default")
    outsider.send_task("ping", kwargs={}, task_id="not-a-uuid", queue="default")
    row = wait_for_state(clean, adopted, timeout=30)
    assert (row["state"], row["submitted_by"], row["result"]["message"]) == ("succeeded", "adopted", "plain")
    deadline = time.monotonic() + 30
    refused = None
    while refused is None and time.monotonic() < deadline:
        with db.transaction(clean) as conn:
            refused = conn.execute(sa.select(jobs).where(jobs.c.state == "failed")).first()
        time.sleep(0.1)
    assert refused is not None
    assert "not-a-uuid" in refused.error["message"]
