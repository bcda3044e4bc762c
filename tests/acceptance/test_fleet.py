"""The fleet with real processes: a kind rolled out to some workers, two workers on one host,
Celery's default queue, queues nobody consumes, and garbage on a queue."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import broker as broker_side
from jobs import db, wire
from jobs.schema import job_attempts, jobs
from jobs.settings import Settings
from tests.support.fixtures import Processes, run_jobs, run_jobs_together, wait_for_state

pytestmark = pytest.mark.acceptance

ROLLOUT = {"JOBS_KIND_MODULES": "tests.support.kinds,tests.support.rollout"}


def submit_greetings(tmp_path: Path, names: list[str]) -> list[uuid.UUID]:
    """Jobs of the new kind, from a producer that has the new release (the ledger accepts them)."""
    lines = tmp_path / f"greetings-{uuid.uuid4()}.jsonl"
    lines.write_text("".join(json.dumps({"name": name}) + "\n" for name in names))
    result = run_jobs("submit", "rollout.greet", "--from-file", str(lines), env=ROLLOUT)
    assert result.returncode == 0, result.stderr
    return [uuid.UUID(line) for line in result.stdout.split()]


def rows(settings: Settings, ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    with db.transaction(settings) as conn:
        found = conn.execute(sa.select(jobs).where(jobs.c.id.in_(ids))).all()
    return [dict(row._mapping) for row in found]


def wait_rows(
    settings: Settings, ids: list[uuid.UUID], ok: Any, timeout: float = 60.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = rows(settings, ids)
        if len(found) == len(ids) and all(ok(row) for row in found):
            return found
        time.sleep(0.2)
    states = sorted({(row["state"], row["handed_back_at"] is not None) for row in found})
    raise AssertionError(
        f"{len(ids)} jobs not all as expected after {timeout}s: (state, handed back) {states}"
    )


def worker_name(processes: Processes, name: str) -> str:
    line = next(line for line in processes.log(name).splitlines() if "enlisted in the roster" in line)
    return line.split("] ", 1)[1].split(" ", 1)[0]


def doctor_checks(env: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    result = run_jobs("doctor", "--json", env=env)
    return {check["name"]: check for check in json.loads(result.stdout)["checks"]}


def test_a_kind_rolled_out_to_some_workers_runs_there_and_spends_no_attempt_elsewhere(
    clean, processes, tmp_path
):
    settings = clean
    processes.start("old", "worker", "-c", "2", "-l", "INFO")
    processes.start("beat", "beat", "-l", "INFO")
    processes.wait_log("old", "ready.", timeout=60)
    processes.wait_log("beat", "is now the leader", timeout=60)

    # Only the old release runs: its worker hands the new kind's jobs back, and they wait.
    early = submit_greetings(tmp_path, [f"early-{n}" for n in range(10)])
    waiting = wait_rows(
        settings, early, lambda row: row["handed_back_at"] is not None and not row["published_at"]
    )
    assert {(row["state"], row["attempt"]) for row in waiting} == {("queued", 0)}
    explained = run_jobs("explain", str(early[0]))
    assert explained.returncode == 0, explained.stderr
    assert "no live worker implements kind 'rollout.greet'" in explained.stdout
    kinds = doctor_checks()["kinds"]
    assert kinds["status"] == "fail"
    assert "no live worker implements kind rollout.greet: 10 job(s)" in kinds["detail"]

    # The new release starts next to the old one; jobs keep coming and land on either worker.
    processes.start("new", "worker", "-c", "2", "-l", "INFO", env=ROLLOUT)
    processes.wait_log("new", "ready.", timeout=60)
    late = submit_greetings(tmp_path, [f"late-{n}" for n in range(40)])

    done = wait_rows(
        settings, early + late, lambda row: row["state"] in ("succeeded", "failed", "cancelled"), 90
    )
    new = worker_name(processes, "new")
    assert {(row["state"], row["attempt"], row["worker"]) for row in done} == {("succeeded", 1, new)}
    with db.transaction(settings) as conn:
        attempts = conn.execute(
            sa.select(job_attempts.c.outcome, sa.func.count())
            .where(job_attempts.c.job_id.in_(early + late))
            .group_by(job_attempts.c.outcome)
        ).all()
    assert dict(attempts) == {"succeeded": 50}  # no attempt wasted on the worker without the kind
    old_log = processes.log("old")
    assert "handed back (this worker does not implement its kind, no attempt spent)" in old_log
    assert "Traceback" not in old_log
    assert "NotRegistered" not in old_log


def test_two_workers_on_one_host_are_two_workers(clean, processes):
    settings = clean
    for name in ("a", "b"):
        processes.start(name, "worker", "-c", "1", "-l", "INFO")
    for name in ("a", "b"):
        processes.wait_log(name, "enlisted in the roster", timeout=60)
    names = {worker_name(processes, "a"), worker_name(processes, "b")}
    assert len(names) == 2

    submitted = [run_jobs("submit", "test.sleep", "-p", "seconds=1") for _ in range(6)]
    assert all(result.returncode == 0 for result in submitted), [result.stderr for result in submitted]
    jobs_ = [uuid.UUID(result.stdout.strip()) for result in submitted]
    ran_on = {wait_for_state(settings, job, timeout=60)["worker"] for job in jobs_}
    assert ran_on == names

    workers, queues = run_jobs_together(("workers", "--json"), ("queues", "--json"))
    alive = {w["name"]: w for w in json.loads(workers.stdout)["workers"] if w["state"] == "alive"}
    assert names <= set(alive)
    assert {alive[name]["pid"] for name in names} == {processes.running[n].pid for n in ("a", "b")}
    default = next(q for q in json.loads(queues.stdout)["queues"] if q["queue"] == "default")
    assert names <= set(default["consumers"])
    for name in ("a", "b"):
        assert "DuplicateNodenameWarning" not in processes.log(name)
    healthy = run_jobs("health", "worker", "--timeout", "10")
    assert healthy.returncode == 0, healthy.stdout
    assert healthy.stdout.split(": ")[1].split(" ")[0] in alive


def test_a_plain_send_task_without_a_queue_is_adopted_from_celerys_default_queue(clean, platform):
    from celery import Celery

    job_id = uuid.uuid4()
    outsider = Celery("outsider", broker=clean.broker_url, set_as_current=False)
    outsider.send_task("ping", kwargs={"message": "from a plain Celery client"}, task_id=str(job_id))

    row = wait_for_state(clean, job_id, timeout=30)
    assert (row["state"], row["queue"], row["submitted_by"]) == ("succeeded", "celery", "adopted")


def test_a_queue_nobody_consumes_shows_in_queues_and_doctor(clean, platform, broker):
    broker.lpush("stray", wire.encode(uuid.uuid4(), "ping", "stray", 0, "{}", "{}"))

    as_json, human = run_jobs_together(("queues", "--json"), ("queues",))
    stray = next(q for q in json.loads(as_json.stdout)["queues"] if q["queue"] == "stray")
    assert (stray["redis"]["ready"], stray["consumers"], stray["unconsumed"]) == (1, [], True)
    assert "no live worker consumes stray" in human.stdout
    check = doctor_checks()["broker queues"]
    assert check["status"] == "warn"
    assert "stray (1)" in check["detail"]


def test_garbage_on_a_queue_is_quarantined_and_the_worker_keeps_running(clean, platform, broker):
    broker.delete(broker_side.QUARANTINE, broker_side.QUARANTINED)
    pid = platform.running["worker"].pid
    broker.lpush("default", b"not json", b"", b"[1, 2, 3]", b'{"properties": "nope"}')
    after = uuid.UUID(run_jobs("submit", "ping").stdout.strip())

    assert wait_for_state(clean, after, timeout=30)["state"] == "succeeded"
    assert platform.running["worker"].poll() is None
    assert platform.running["worker"].pid == pid
    assert broker.llen(broker_side.QUARANTINE) == 4
    log = platform.log("worker")
    assert "quarantined a malformed item from queue default: a JSON list, not an object (9 bytes" in log
    assert "Unrecoverable error" not in log
    check = doctor_checks()["quarantine"]
    assert check["status"] == "warn"
    assert "4 malformed item(s)" in check["detail"]
    broker.delete(broker_side.QUARANTINE, broker_side.QUARANTINED)


def test_a_paused_queue_keeps_its_consumers_in_every_view(clean, platform):
    paused = run_jobs("queue", "pause", "default")
    assert paused.returncode == 0, paused.stderr
    try:
        run_jobs("submit", "ping")
        queues, doctor = run_jobs_together(("queues", "--json"), ("doctor", "--json"))
        default = next(q for q in json.loads(queues.stdout)["queues"] if q["queue"] == "default")
        assert default["paused"] is True
        assert default["consumers"]  # the workers that take its jobs once it is resumed
        checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
        assert checks["workers"]["status"] == "ok"
        assert checks["paused queues"]["status"] == "warn"
    finally:
        assert run_jobs("queue", "resume", "default").returncode == 0
