"""Fixtures for every layer: the test ledger, a clean slate per test, workers in-process and as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import sqlalchemy as sa

from jobs import db, ledger, migrate
from jobs.catalog import load_kinds
from jobs.kinds import Registry
from jobs.producer import Producer
from jobs.schema import TERMINAL_STATES, jobs
from jobs.settings import Settings, get_settings
from tests.support import kinds as test_kinds

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def settings() -> Settings:
    current = get_settings()
    name = sa.make_url(current.database_url).database or ""
    assert name.endswith("_test"), f"tests refuse to run against database {name!r} (must end in _test)"
    assert not current.broker_url.rstrip("/").endswith(("/0", ":6379")), "tests never use Redis db 0"
    return current


@pytest.fixture(scope="session")
def ledger_db(settings: Settings) -> Iterator[Settings]:
    """The test database exists and is at the newest schema."""
    migrate.create_database(settings)
    migrate.upgrade(settings)
    with db.transaction(settings) as conn:
        conn.execute(sa.text(test_kinds.EFFECTS_DDL))
    yield settings
    db.dispose()


@pytest.fixture(scope="session")
def registry(settings: Settings) -> Registry:
    return load_kinds(settings.kind_modules)


@pytest.fixture(scope="session")
def broker(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.broker_url)


def clear_broker(client: redis.Redis, settle: float = 10.0) -> None:
    """Empty the queues in the tests' own Redis db (never another db); kombu's bindings stay.

    First waits (up to ``settle`` seconds) for messages a running worker holds to be
    acknowledged, so a previous test's job is not adopted into the next test's ledger.
    """
    deadline = time.monotonic() + settle
    while client.hlen("unacked") and time.monotonic() < deadline:
        time.sleep(0.05)
    keys = [key for key in client.scan_iter(count=1000) if not key.startswith(b"_kombu.binding")]
    if keys:
        client.delete(*keys)


def insert_job(
    settings: Settings, state: str = "queued", *, max_attempts: int = 3, age_seconds: float = 0.0
) -> uuid.UUID:
    """A ping job written straight into the ledger (no broker), created ``age_seconds`` ago."""
    job_id = uuid.uuid4()
    with db.transaction(settings) as conn:
        ledger.insert_rows(
            conn,
            [
                {
                    "id": job_id,
                    "kind": "ping",
                    "queue": "default",
                    "priority": 5,
                    "payload": {},
                    "state": state,
                    "max_attempts": max_attempts,
                }
            ],
            idempotent=False,
        )
        if age_seconds:
            age = sa.func.now() - sa.text(f"interval '{int(age_seconds)} seconds'")
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(created_at=age))
    return job_id


def queued_messages(client: redis.Redis, queue: str = "default") -> int:
    """Messages waiting in a queue, over all its priority lists."""
    return sum(client.llen(key) for key in client.scan_iter(f"{queue}*") if client.type(key) == b"list")


@pytest.fixture
def clean(ledger_db: Settings, broker: redis.Redis) -> Settings:
    """An empty ledger and an empty test broker db for this test."""
    clear_broker(broker)  # first: lets a worker finish what it holds from the previous test
    for attempt in range(5):
        try:
            with db.transaction(ledger_db) as conn:
                # The roster (workers, fleet_kinds) stays: module-scoped workers enlisted once.
                conn.execute(
                    sa.text(
                        "TRUNCATE jobs, job_attempts, test_effects, queue_pauses, broker_epochs, counters,"
                        " limits, limit_slots, limit_keys, workflows, job_deps"
                    )
                )
            break
        except sa.exc.OperationalError as error:
            # A module's leader or worker locked the same tables in another order: PostgreSQL
            # picked the TRUNCATE as the deadlock's victim. Its transaction rolled back; again.
            if not isinstance(error.orig, psycopg.errors.DeadlockDetected) or attempt == 4:
                raise
            time.sleep(0.2)
    ledger.forget_targets()
    return ledger_db


@pytest.fixture
def producer(clean: Settings, registry: Registry) -> Producer:

    return Producer(clean, registry=registry)


def wait_for_state(
    settings: Settings, job_id: uuid.UUID, states: tuple[str, ...] = TERMINAL_STATES, timeout: float = 20.0
) -> dict[str, Any]:
    """Poll the ledger until the job is in one of ``states``; returns its row."""
    deadline = time.monotonic() + timeout
    row: Any = None
    while time.monotonic() < deadline:
        with db.transaction(settings) as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is not None and row.state in states:
            return dict(row._mapping)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout}s; last seen: {row and row.state}")


def effects(settings: Settings, key: str) -> list[dict[str, Any]]:
    with db.transaction(settings) as conn:
        rows = conn.execute(
            sa.text("SELECT key, job_id, attempt FROM test_effects WHERE key = :k ORDER BY attempt"),
            {"k": key},
        ).all()
    return [dict(row._mapping) for row in rows]


@pytest.fixture
def worker(clean: Settings) -> Iterator[Any]:
    """A real Celery worker in this process (solo pool, in a thread), consuming the test broker."""
    from celery.contrib.testing.worker import start_worker

    from workers import app

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as running:
        yield running


@pytest.fixture
def maintenance(clean: Settings, registry: Registry) -> Any:
    """The leader's maintenance loops, to run by hand."""
    from beat.context import Maintenance
    from jobs.app import get_app

    return Maintenance(clean, get_app(), registry)


def run_jobs(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The real ``jobs`` command, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "jobs", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_jobs_together(
    *commands: tuple[str, ...], env: dict[str, str] | None = None, timeout: float = 60
) -> list[subprocess.CompletedProcess[str]]:
    """Several read-only ``jobs`` commands at once (say the ``--json`` and the human form); results in order.

    Each command waits mostly on its start-up and on the servers, so running them side by
    side halves the wall time of a test that checks both forms of the same view.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = [pool.submit(run_jobs, *command, env=env, timeout=timeout) for command in commands]
        return [future.result() for future in futures]


class Processes:
    """Platform processes started by a test, stopped by pid when it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [sys.executable, "-m", "jobs", *args],
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            if self.running[name].poll() is not None:
                raise AssertionError(f"{name} exited early:\n{self.log(name)[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{name} did not log {text!r} in {timeout}s:\n{self.log(name)[-3000:]}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        process = self.running.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="module")
def platform(ledger_db: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """A worker (prefork, 2 processes) and a leader, as real processes, for a module of tests."""
    started = Processes(tmp_path_factory.mktemp("platform"))
    try:
        started.start("worker", "worker", "-c", "2", "-l", "INFO")
        started.start("beat", "beat", "-l", "INFO")
        started.wait_log("worker", "ready.")
        started.wait_log("beat", "is now the leader")
        yield started
    finally:
        started.stop_all()


StateWaiter = Callable[..., dict[str, Any]]
