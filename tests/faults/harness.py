"""The fault-injection harness: a whole platform on private servers, with short timers.

``Platform`` owns a private Redis and PostgreSQL (``tests.support.servers``),
worker and beat subprocesses pointed at them (``tests.support.fixtures.Processes``),
a producer, and the scenario's ``Workload`` for the checker. The timers are
test settings (``FAULT_TIMERS``): a lease of 6 s, a visibility timeout of
7 s, a soft shutdown of 3 s, so each scenario takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import redis
import sqlalchemy as sa
from kombu.transport import redis as kombu_redis

from jobs import db, ledger, migrate
from jobs.app import create_app
from jobs.catalog import load_kinds
from jobs.errors import LedgerUnavailable
from jobs.kinds import Registry
from jobs.ledger import ACTIVE_STATES
from jobs.producer import JobId, Producer
from jobs.schema import TERMINAL_STATES, jobs
from jobs.settings import Settings, load_settings
from tests.faults.checker import Report, Workload, check, wait_for_quiet
from tests.support import kinds as test_kinds
from tests.support.fixtures import Processes, run_jobs
from tests.support.servers import PostgresServer, RedisServer

__all__ = ["FAULT_TIMERS", "Platform", "private_platform"]

DATABASE = "jobs_faults_test"
BROKER_DB = 1

#: Short timers for every process of a fault scenario (the production values are minutes and hours).
FAULT_TIMERS = {
    "JOBS_KIND_MODULES": "tests.support.kinds",
    "JOBS_LEADER_TICK": "0.2",
    "JOBS_LEADER_TAKEOVER": "2",
    "JOBS_RELAY_GRACE": "1",
    "JOBS_SOFT_TIME_LIMIT": "4",
    "JOBS_HARD_TIME_LIMIT": "5",
    "JOBS_LEASE_MARGIN": "1",
    "JOBS_VISIBILITY_TIMEOUT": "7",
    "JOBS_REPUBLISH_AFTER": "60",
    "JOBS_PUBLISH_TIMEOUT": "1",
    "JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "3",
    "JOBS_WORKER_STALL_TIMEOUT": "3",
    "JOBS_WORKER_HEARTBEAT": "1",
    "JOBS_WORKER_MAX_MEMORY_PER_CHILD": "200000",
    "JOBS_LOG_FORMAT": "text",
}

_PID = re.compile(r"pid (\d+)")


class Platform:
    """Private servers, platform processes and the scenario's workload."""

    def __init__(self, redis_server: RedisServer, postgres: PostgresServer, log_dir: Path) -> None:
        self.redis = redis_server
        self.postgres = postgres
        self.log_dir = log_dir
        self.env = {
            **FAULT_TIMERS,
            "JOBS_DATABASE_URL": postgres.url(DATABASE),
            "JOBS_BROKER_URL": redis_server.url(BROKER_DB),
        }
        overrides = {key.removeprefix("JOBS_").lower(): value for key, value in self.env.items()}
        self.settings: Settings = load_settings(**overrides)
        self.registry: Registry = load_kinds(self.settings.kind_modules)
        self.producer = Producer(self.settings, registry=self.registry)
        self.processes = Processes(log_dir)
        self.workload = Workload()
        self.restarts: list[str] = []  # what the supervisor did, for the scenario's report

    # -- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create and migrate the private ledger, and the test kinds' effects table."""
        migrate.create_database(self.settings)
        migrate.upgrade(self.settings)
        with db.transaction(self.settings) as conn:
            conn.execute(sa.text(test_kinds.EFFECTS_DDL))

    def heal(self) -> None:
        """Servers up and answering, whatever the previous scenario left behind."""
        for server in (self.redis, self.postgres):
            server.resume()
            if server.process is None or server.process.poll() is not None:
                server.start()
        db.dispose()

    def broker(self) -> redis.Redis:
        return self.redis.client(BROKER_DB)

    def reset(self) -> None:
        """Start a scenario: empty queues, and a checker that looks only at what happens from now on.

        The ledger is not emptied: a late copy of an earlier scenario's message must
        meet its row (and be absorbed by the claim, as in production), not be adopted
        as a stranger. What an earlier scenario left unfinished is cancelled.
        """
        client = self.broker()
        keep = (b"_kombu.binding", b"jobs.epoch")
        keys = [key for key in client.scan_iter(count=1000) if not key.startswith(keep)]
        if keys:
            client.delete(*keys)
        with self.ledger() as conn:
            leftovers = (
                conn.execute(sa.select(jobs.c.id).where(jobs.c.state.in_(ACTIVE_STATES))).scalars().all()
            )
            for job_id in leftovers:
                ledger.cancel(conn, job_id)
            ledger.release(conn, leftovers)  # their limit slots go (the jobs they admit are cancelled too)
            since = conn.execute(sa.select(sa.func.now())).scalar_one()
        self.workload = Workload(since=since)
        self.restarts = []

    def ledger(self) -> Any:
        return db.transaction(self.settings)

    # -- processes ----------------------------------------------------------------------------

    def start_worker(
        self, name: str = "worker", *args: str, env: Mapping[str, str] | None = None, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        argv = ["worker", "-n", f"{name}@%h", "-l", "INFO", *args]
        if "-c" not in args:
            argv += ["-c", "2"]
        mark = self.log_mark(name)  # a restarted process appends to its log: wait for this start's line
        process = self.processes.start(name, *argv, env={**self.env, **(env or {})})
        if wait:
            self.wait_log_since(name, mark, "ready.", timeout=60)
        return process

    def start_beat(self, name: str = "beat", env: Mapping[str, str] | None = None) -> None:
        mark = self.log_mark(name)
        self.processes.start(name, "beat", "-l", "INFO", env={**self.env, **(env or {})})
        self.wait_log_since(name, mark, "is now the leader", timeout=60)

    def running(self, name: str) -> bool:
        process = self.processes.running.get(name)
        return process is not None and process.poll() is None

    def ensure(self) -> None:
        """The standard fleet: one worker (prefork, 2 processes) and one leader, started if missing."""
        for name in list(self.processes.running):
            if name not in ("worker", "beat") or not self.running(name):
                self.processes.stop(name, signal.SIGKILL)
        restart, mark = not self.running("worker"), self.log_mark("worker")
        if restart:
            self.start_worker("worker", wait=False)
        if not self.running("beat"):
            self.start_beat()
        if restart:  # its log holds an earlier run's lines: wait for this start's
            self.wait_log_since("worker", mark, "ready.", timeout=60)

    def supervise(self) -> None:
        """Do what production's supervisor does (Compose's restart policy, systemd, Kubernetes).

        A standard worker or leader that exited by itself (not one a scenario killed:
        those are ``forget``-ten) is started again, and the restart is recorded with
        the last line the process logged. Celery's worker exits now and then on a broker
        connection loss (``Unrecoverable error`` inside kombu's reconnect); production
        restarts it, so the scenarios do too, and say so in their output.
        """
        for name in ("worker", "beat"):
            process = self.processes.running.get(name)
            if process is None or process.poll() is None:
                continue
            last = (self.log(name).strip().splitlines() or ["(no output)"])[-1]
            self.restarts.append(f"{name} exited with code {process.returncode} ({last[:200]}); restarted")
            print(f"supervisor: {self.restarts[-1]}")
            self.processes.running.pop(name)
            if name == "worker":
                self.start_worker("worker", wait=False)
            else:
                self.processes.start(name, "beat", "-l", "INFO", env=self.env)

    def log(self, name: str) -> str:
        return self.processes.log(name)

    def log_mark(self, name: str) -> int:
        """Where a process's log ends now (0 before it first started): read what it logs from here
        on with ``log_since``."""
        try:
            return len(self.log(name))
        except FileNotFoundError:
            return 0

    def log_since(self, name: str, mark: int) -> str:
        return self.log(name)[mark:]

    def wait_log_since(self, name: str, mark: int, text: str, timeout: float = 30.0) -> float:
        """Wait until the process logs ``text`` after ``mark``; returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if text in self.log_since(name, mark):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(
            f"{name} did not log {text!r} in {timeout}s:\n{self.log_since(name, mark)[-3000:]}"
        )

    def pid_of(self, name: str) -> int:
        return self.processes.running[name].pid

    def pool_children(self, name: str = "worker") -> list[int]:
        return [child.pid for child in psutil.Process(self.pid_of(name)).children()]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal only the main process (not its pool children)."""
        os.kill(self.pid_of(name), sig)

    def forget(self, name: str) -> None:
        """Stop what is left of a process group we killed (its orphaned children), by pid."""
        self.processes.stop(name, signal.SIGKILL, timeout=10)

    # -- jobs -----------------------------------------------------------------------------------

    def submit(self, kind: str, payload: Mapping[str, Any] | None = None, **options: Any) -> JobId:
        job = self.producer.submit(kind, payload or {}, **options)
        self.workload.accept(job)
        return job

    def base_env(self) -> dict[str, str]:
        """The test process's environment (for subprocesses started without ``Processes``)."""
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def jobs(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """The real ``jobs`` command, pointed at the private servers."""
        return run_jobs(*args, env={**self.env, **(env or {})}, timeout=timeout)

    def row(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        with self.ledger() as conn:
            found = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return None if found is None else dict(found._mapping)

    def wait(
        self,
        job_id: uuid.UUID,
        states: tuple[str, ...] = TERMINAL_STATES,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Poll the ledger until the job is in one of ``states`` (PostgreSQL may be away meanwhile)."""
        deadline = time.monotonic() + timeout
        row: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            try:
                row = self.row(job_id)
            except LedgerUnavailable:
                row = None
            if row is not None and row["state"] in states and (where is None or where(row)):
                return row
            self.supervise()
            time.sleep(0.05)
        raise AssertionError(
            f"job {job_id} not in {states} after {timeout}s; last seen: {row and row['state']}\n"
            f"{self.describe_fleet()}"
        )

    def describe_fleet(self) -> str:
        """Each process alive or not, the supervisor's restarts, and the end of the worker's log."""
        lines = [
            f"  {name}: {'running' if process.poll() is None else f'exited with code {process.returncode}'}"
            for name, process in self.processes.running.items()
        ]
        lines += [f"  supervisor: {restart}" for restart in self.restarts]
        if "worker" in self.processes.running:
            tail = [line for line in self.log("worker").splitlines() if line.startswith("[")][-15:]
            lines += ["  worker log (last lines):", *(f"    {line[:220]}" for line in tail)]
        return "\n".join(lines)

    def running_pid(self, job_id: uuid.UUID, timeout: float = 20.0) -> int:
        """The pool process running a ``test.work`` job (the body reports its pid as progress)."""
        row = self.wait(job_id, ("running",), timeout, where=lambda r: bool(r["progress"]))
        match = _PID.search(row["progress"]["message"])
        assert match, row["progress"]
        return int(match.group(1))

    def effects(self, key: str) -> list[dict[str, Any]]:
        with self.ledger() as conn:
            rows = conn.execute(
                sa.text("SELECT key, job_id, attempt FROM test_effects WHERE key = :k ORDER BY attempt"),
                {"k": key},
            ).all()
        return [dict(row._mapping) for row in rows]

    def redeliver_expired(self) -> None:
        """Put back on their queues the unacknowledged messages older than the visibility timeout.

        This is kombu's own sweep (``QoS.restore_visible``), which a worker runs every
        ``unacked_restore_interval`` x ``unacked_restore_throttle`` seconds (about 100 s by
        default); the scenario runs it now instead of waiting for it.
        """
        app = create_app(self.settings)
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            assert isinstance(channel, kombu_redis.Channel), channel
            channel.qos.restore_visible(num=1000, interval=1)

    def control(self, command: str, node: str = "worker") -> list[dict[str, Any]]:
        """Send a remote-control command to one worker node and return its replies."""
        import socket

        app = create_app(self.settings)
        destination = [f"{node}@{socket.gethostname()}"]
        return list(app.control.broadcast(command, destination=destination, reply=True, timeout=5) or [])

    def send_foreign(self, kind: str, kwargs: dict[str, Any], job_id: uuid.UUID | None = None) -> uuid.UUID:
        """A message from a plain Celery producer (``send_task``), not through the ledger."""
        job_id = job_id or uuid.uuid4()
        app = create_app(self.settings)
        app.send_task(kind, kwargs=kwargs, task_id=str(job_id), queue=self.settings.default_queue)
        return job_id

    def queued_messages(self) -> int:
        client = self.broker()
        return sum(client.llen(key) for key in client.scan_iter("default*") if client.type(key) == b"list")

    def on_broker(self) -> set[uuid.UUID]:
        """The jobs whose messages are on the broker: waiting in a queue or taken by a worker."""
        client = self.broker()
        messages = [
            json.loads(item)
            for key in client.scan_iter("default*")
            if client.type(key) == b"list"
            for item in client.lrange(key, 0, -1)
        ]
        messages += [json.loads(value)[0] for value in client.hvals("unacked")]
        return {uuid.UUID(message["headers"]["id"]) for message in messages}

    # -- the checker ----------------------------------------------------------------------------

    def settle_and_check(self, timeout: float = 60.0) -> Report:
        """Wait for every accepted job to finish (or ``timeout``), then run the checker."""
        wait_for_quiet(self.settings, self.workload, timeout, tick=self.supervise)
        return check(self.settings, self.workload)

    def close(self) -> None:
        self.processes.stop_all()
        db.dispose()


def private_platform(root: Path) -> Iterator[Platform]:
    """Servers, ledger and fleet for a run of scenarios; everything is stopped by pid at the end."""
    with RedisServer() as redis_server, PostgresServer() as postgres:  # own temp dirs, removed after
        platform = Platform(redis_server, postgres, root)
        try:
            platform.prepare()
            yield platform
        finally:
            platform.close()
