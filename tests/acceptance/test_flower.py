"""Flower as ``jobs flower`` runs it: behind basic auth, showing jobs under their ids and kinds.

Through Flower's HTTP API, then through a real browser (headless Chromium):
the screenshots are kept under ``test-artifacts/flower/`` (not in git) and
their paths are printed. Flower's states and counters are compared with the
ledger for a mixed set of jobs (retried, failed, cancelled, foreign).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from jobs import db
from jobs.app import get_app
from jobs.schema import fleet_kinds, job_attempts, jobs
from jobs.workflows import Workflow, submit_workflow
from tests.support.fixtures import ROOT, Processes, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance

USER, PASSWORD = "operator", "flower-test-password"
SECRET = "TOPSECRET-" + uuid.uuid4().hex[:8]
NODE = f"flowertest@{socket.gethostname()}"
ARTIFACTS = ROOT / "test-artifacts" / "flower"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Flower:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.authed = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"

    def get(self, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD)) -> httpx.Response:
        return httpx.get(self.base + path, auth=auth, timeout=10)

    def task(self, job_id: uuid.UUID, state: str, timeout: float = 30.0) -> dict[str, Any]:
        """Flower's view of a job once its events say ``state``."""
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            response = self.get(f"/api/task/info/{job_id}")
            if response.status_code == 200:
                seen = response.json()
                if seen.get("state") == state:
                    return dict(seen)
            time.sleep(0.3)
        raise AssertionError(f"Flower did not show job {job_id} as {state} in {timeout}s; last: {seen}")


@pytest.fixture(scope="module")
def flower(ledger_db, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    """A worker, a leader (it publishes retries) and ``jobs flower`` (basic auth, state file in a
    temp dir) on a free port."""
    port = free_port()
    logs = tmp_path_factory.mktemp("flower")
    env = {"JOBS_FLOWER_USER": USER, "JOBS_FLOWER_PASSWORD": PASSWORD, "JOBS_FLOWER_PORT": str(port)}
    started = Processes(logs)
    try:
        started.start("worker", "worker", "-c", "1", "-n", NODE, "-l", "INFO")
        started.start("flower", "flower", "--state-file", str(logs / "flower.db"), env=env)
        started.start("beat", "beat")
        started.wait_log("worker", "ready.", timeout=60)
        started.wait_log("beat", "is now the leader", timeout=60)
        # Workers send task events while an event consumer asks for them (workers.events): Flower
        # asks every 5 s, `jobs flower` once at its start.
        started.wait_log("worker", "Events of group {task} enabled by remote", timeout=60)
        view = Flower(port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if view.get("/healthcheck", auth=None).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError(f"Flower did not start:\n{started.log('flower')[-3000:]}")
        yield view
    finally:
        started.stop_all()


def submit(*args: str) -> uuid.UUID:
    result = run_jobs("submit", *args)
    assert result.returncode == 0, result.stderr
    return uuid.UUID(result.stdout.strip())


def test_without_credentials_the_api_answers_401(flower):
    for path in ("/api/workers", "/api/tasks", "/workers", "/tasks"):
        assert flower.get(path, auth=None).status_code == 401, path
    assert flower.get("/api/workers", auth=(USER, "wrong")).status_code == 401


def test_a_job_appears_under_its_id_with_its_kind_and_final_state(flower, clean):
    job_id = submit("ping", "-p", "message=seen by flower")
    assert wait_for_state(clean, job_id)["state"] == "succeeded"

    task = flower.task(job_id, "SUCCESS")
    assert task["uuid"] == str(job_id)
    assert task["name"] == "ping"
    assert task["worker"] == NODE
    assert "seen by flower" in task["kwargs"]

    workers = flower.get("/api/workers?refresh=1").json()
    assert NODE in workers
    assert any(queue["name"] == "default" for queue in workers[NODE]["active_queues"])


def test_a_failed_job_shows_as_failed(flower, clean):
    failed = submit("test.fail", "--max-attempts", "1")
    assert wait_for_state(clean, failed)["state"] == "failed"
    assert flower.task(failed, "FAILURE", timeout=15)["name"] == "test.fail"


def test_secret_payload_fields_are_masked(flower, clean):
    job_id = submit("test.secret", "-p", "user=ada", "-p", f"token={SECRET}")

    task = flower.task(job_id, "SUCCESS")

    assert task["name"] == "test.secret"
    assert "'token': '**********'" in task["kwargs"]
    assert "ada" in task["kwargs"]
    assert SECRET not in flower.get("/api/tasks").text
    assert SECRET not in flower.get(f"/api/task/info/{job_id}").text


def test_a_workflows_steps_appear_as_tasks_under_their_job_ids(flower, clean, producer):
    """Each step that ran is a task whose uuid is its job id and whose name is its kind, with its
    payload as resolved from its parents; a step cancelled before it ran never reached a worker."""
    flow = Workflow("flower-diamond")
    flow.step("a", "test.step", {"value": 1})
    flow.step("b", "test.step", {"value": 2}, after=["a"])
    flow.step("c", "test.step", {"value": 3}, after=["a"])
    flow.step("d", "test.sum", after=["b", "c"], inputs={"numbers": ["b.value", "c.value"]})
    flow.step("e", "ping", {"message": "after d"}, after=["d"])
    flow.step("doomed", "test.step", {"fail": True})
    flow.step("never", "test.step", after=["doomed"])
    wid = submit_workflow(flow, producer=producer)
    assert wait_for_state(clean, wid.steps["e"], timeout=60)["state"] == "succeeded"
    assert wait_for_state(clean, wid.steps["never"], timeout=60)["state"] == "cancelled"

    kinds = {"a": "test.step", "b": "test.step", "c": "test.step", "d": "test.sum", "e": "ping"}
    for name, kind in kinds.items():
        task = flower.task(wid.steps[name], "SUCCESS")
        assert (task["uuid"], task["name"]) == (str(wid.steps[name]), kind), name
    assert "'numbers': [2, 3]" in flower.task(wid.steps["d"], "SUCCESS")["kwargs"]
    assert flower.task(wid.steps["doomed"], "FAILURE")["name"] == "test.step"
    assert flower.get(f"/api/task/info/{wid.steps['never']}").status_code == 404


def chromium(*args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "headless Chromium is needed: apt-get install -y chromium (.ci/run installs it)"
    profile = ARTIFACTS / ".profile"
    result = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",  # the tests may run as root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1400,900",
            "--virtual-time-budget=8000",  # lets the pages' scripts fetch their tables
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HOME": str(profile)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def screenshot(flower: Flower, page: str) -> Path:
    path = ARTIFACTS / f"{page}.png"
    path.unlink(missing_ok=True)
    chromium(f"--screenshot={path}", f"{flower.authed}/{page}")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000, "an empty page"
    print(f"Flower screenshot: {path}")
    return path


def test_a_browser_sees_the_worker_online_and_the_job(flower, clean):
    """Basic auth through the URL (user:password@host) works for Chromium's top-level page and its fetches."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    job_id = submit("ping", "-p", "message=screenshot")
    flower.task(job_id, "SUCCESS")

    workers = chromium("--dump-dom", f"{flower.authed}/workers")
    tasks = chromium("--dump-dom", f"{flower.authed}/tasks")

    assert NODE in workers
    assert "Online" in workers
    assert str(job_id) in tasks
    assert "ping" in tasks
    assert "SUCCESS" in tasks
    screenshot(flower, "workers")
    screenshot(flower, "tasks")


FLOWER_STATE = {"succeeded": "SUCCESS", "failed": "FAILURE", "cancelled": "REVOKED"}
COUNTED = ("task-succeeded", "task-failed", "task-retried", "task-revoked")


def counters(flower: Flower) -> dict[str, int]:
    """The worker's event counters as Flower's Workers page shows them (Succeeded, Failed, Retried)."""
    for worker in flower.get("/workers?json=1").json()["data"]:
        if worker.get("hostname") == NODE:
            return {name: int(worker.get(name, 0)) for name in COUNTED}
    return dict.fromkeys(COUNTED, 0)


def ledger_view(settings, ids: list[uuid.UUID]) -> tuple[dict[uuid.UUID, str], int]:
    """Each job's state, and the attempts the ledger says were retried (errors before the last)."""
    with db.transaction(settings) as conn:
        states = dict(conn.execute(sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(ids))).all())
        rows = conn.execute(
            sa.select(job_attempts.c.job_id, job_attempts.c.attempt, job_attempts.c.outcome).where(
                job_attempts.c.job_id.in_(ids)
            )
        ).all()
    last = {row.job_id: max(r.attempt for r in rows if r.job_id == row.job_id) for row in rows}
    retried = sum(
        1
        for row in rows
        if row.outcome == "error" and (row.attempt < last[row.job_id] or states[row.job_id] == "retrying")
    )
    return states, retried


def test_flower_agrees_with_the_ledger_on_a_mixed_set_of_jobs(flower, clean):
    """Retried attempts are RETRY (not FAILURE), a cancelled job REVOKED, only final failures
    FAILURE; a foreign message of a kind nobody implements has its name; a job handed back by a
    worker that lacks its kind is no failure. Flower's counters match the ledger's counts."""
    before = counters(flower)
    with db.transaction(clean) as conn:  # a kind the fleet implements elsewhere: its job waits
        conn.execute(sa.delete(fleet_kinds).where(fleet_kinds.c.kind == "flowertest.elsewhere"))
        conn.execute(sa.insert(fleet_kinds).values(kind="flowertest.elsewhere", version="1"))
    try:
        succeeded = submit("ping", "-p", "message=mixed")
        retried = submit("test.flaky", "-p", "succeed_on=2")
        failed = submit("test.fail")
        cancelled = submit("test.effect", "-p", "key=flower-cancel", "-p", "sleep=30")
        unknown, elsewhere = uuid.uuid4(), uuid.uuid4()
        get_app().send_task("flowertest.nobody", kwargs={"x": 1}, task_id=str(unknown), queue="default")
        assert wait_for_state(clean, cancelled, states=("running",))["state"] == "running"
        result = run_jobs("cancel", str(cancelled))
        assert result.returncode == 0, result.stderr
        get_app().send_task("flowertest.elsewhere", kwargs={}, task_id=str(elsewhere), queue="default")
        ids = [succeeded, retried, failed, cancelled, unknown]
        for job_id in ids:
            wait_for_state(clean, job_id, timeout=30)
        assert wait_for_state(clean, elsewhere, states=("queued",))["handed_back_at"] is not None
    finally:
        with db.transaction(clean) as conn:
            conn.execute(sa.delete(fleet_kinds).where(fleet_kinds.c.kind == "flowertest.elsewhere"))

    states, retries = ledger_view(clean, [*ids, elsewhere])
    assert states == {
        succeeded: "succeeded",
        retried: "succeeded",
        failed: "failed",
        cancelled: "cancelled",
        unknown: "failed",
        elsewhere: "queued",
    }
    for job_id in ids:
        task = flower.task(job_id, FLOWER_STATE[states[job_id]])
        assert task["name"], task
    assert flower.task(unknown, "FAILURE")["name"] == "flowertest.nobody"
    assert flower.task(failed, "FAILURE")["exception"] == "RuntimeError('boom on attempt 3')"

    expected = {
        "task-succeeded": sum(state == "succeeded" for state in states.values()),
        "task-failed": sum(state == "failed" for state in states.values()),
        "task-retried": retries,
        "task-revoked": sum(state == "cancelled" for state in states.values()),
    }
    assert expected == {"task-succeeded": 2, "task-failed": 2, "task-retried": 3, "task-revoked": 1}
    deadline = time.monotonic() + 20
    while True:
        now = counters(flower)
        delta = {name: now[name] - before[name] for name in COUNTED}
        if delta == expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert delta == expected
    shown = flower.get(f"/api/task/info/{elsewhere}")
    assert shown.status_code == 404 or shown.json().get("state") != "FAILURE"
