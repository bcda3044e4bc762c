"""The image's commands, run outside Docker against the real servers: each starts and becomes healthy.

docker-compose.yml is the source of every command here: each app service's ``command``
(after the image's ``jobs`` entrypoint) and its healthcheck's ``jobs health ...`` run as
they would in their containers, with the Dockerfile's runtime ``ENV`` and a scratch
working directory (the image's WORKDIR), on the tests' database and Redis db instead of
the compose ones. No Docker engine is needed, and none is used.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from jobs import db, migrate
from jobs.cli import context
from jobs.cli.main import cli
from jobs.kinds import Registry
from jobs.producer import Producer
from jobs.schema import jobs
from jobs.settings import Settings, load_settings
from tests.support.fixtures import ROOT, Processes, clear_broker, run_jobs, wait_for_state
from tests.support.isolation import scratch_database_url

pytestmark = pytest.mark.acceptance

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
FLOWER_USER, FLOWER_PASSWORD = "operator", "test-flower-password"


def defaults(value: str, **required: str) -> str:
    """Compose interpolation with only ``required`` set: ``${X:-d}`` is ``d``, ``$$`` is ``$``."""
    value = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: required.get(m.group(1), m.group(0)), value)
    value = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)
    assert "${" not in value, f"a required variable in a command: {value}"
    return value.replace("$$", "$")


def command(service: str) -> list[str]:
    """The service's ``jobs`` arguments (the image's entrypoint is ``jobs``)."""
    return [defaults(arg) for arg in SERVICES[service]["command"]]


def service_env(service: str) -> dict[str, str]:
    """What the service adds to the x-app environment (the servers' URLs stay the tests')."""
    anchor = COMPOSE["x-app"]["environment"]
    added = {key: value for key, value in SERVICES[service]["environment"].items() if key not in anchor}
    return {
        key: defaults(str(value), JOBS_FLOWER_USER="", JOBS_FLOWER_PASSWORD="")
        for key, value in added.items()
    }


def healthcheck(service: str) -> list[str]:
    """The service's healthcheck as ``jobs`` arguments."""
    test: list[str] = SERVICES[service]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "jobs"], f"{service}: healthcheck is not an exec-form jobs command: {test}"
    return test[2:]


def image_env() -> dict[str, str]:
    """The runtime stage's ``ENV`` of the Dockerfile (values that need no expansion)."""
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.index(" AS runtime") :]
    found = dict(re.findall(r"^ENV (\w+)=(\S+)$", runtime, flags=re.MULTILINE))
    assert "REMAP_SIGTERM" in found, "the Dockerfile's runtime stage sets no REMAP_SIGTERM"
    return {name: value for name, value in found.items() if "$" not in value}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Containers(Processes):
    """Processes started as the image starts them: the image's ENV, a scratch working directory."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        super().__init__(log_dir)
        self.env = env
        self.workdir = log_dir / "workdir"
        self.workdir.mkdir()

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                [sys.executable, "-m", "jobs", *args],
                cwd=self.workdir,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[name] = process
        return process

    def stop_all(self) -> None:
        # Signal every process first (workers take their soft-shutdown time), then wait.
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        super().stop_all()


def base_env() -> dict[str, str]:
    # The tests' kinds live in the source tree; the image's are in the installed packages.
    return {**os.environ, **image_env(), "PYTHONPATH": str(ROOT)}


def health(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_jobs(*args, env={**image_env(), **(env or {})}, timeout=60)


def wait_healthy(args: list[str], env: dict[str, str] | None = None, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        result = health(args, env)
        if result.returncode == 0:
            return result.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs {' '.join(args)} stayed unhealthy: {result.stdout}{result.stderr}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def producer(ledger_db: Settings, registry: Registry, broker: redis.Redis) -> Producer:
    """Submits to the stack, from an empty ledger and broker db (emptied once, before it starts)."""

    with db.transaction(ledger_db) as conn:
        conn.execute(sa.text("TRUNCATE jobs, job_attempts, limit_slots, workflows, job_deps, test_effects"))
    clear_broker(broker)
    return Producer(ledger_db, registry=registry)


@pytest.fixture(scope="module")
def flower_env() -> dict[str, str]:
    return {
        "JOBS_FLOWER_ADDRESS": "127.0.0.1",  # compose binds 0.0.0.0 inside its container
        "JOBS_FLOWER_PORT": str(free_port()),
        "JOBS_FLOWER_USER": FLOWER_USER,
        "JOBS_FLOWER_PASSWORD": FLOWER_PASSWORD,
    }


@pytest.fixture(scope="module")
def stack(
    producer: Producer, flower_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Containers]:
    """worker, worker-io, beat and flower, started at once from their compose commands."""
    started = Containers(tmp_path_factory.mktemp("stack"), base_env())
    try:
        for service in ("worker", "worker-io", "beat"):
            started.start(service, *command(service), env=service_env(service))
        started.start("flower", *command("flower"), env={**service_env("flower"), **flower_env})
        yield started
    finally:
        started.stop_all()


def test_migrate_brings_an_empty_database_to_the_newest_schema(
    ledger_db: Settings, stack: Containers
) -> None:
    # (stack: the long-running services boot meanwhile)
    url = scratch_database_url(ledger_db.database_url, f"migrate_{uuid.uuid4().hex[:8]}")
    scratch = sa.make_url(url)
    migrate.create_database(load_settings(database_url=url))
    try:
        result = run_jobs(*command("migrate"), env={**image_env(), "JOBS_DATABASE_URL": url})
        assert result.returncode == 0, result.stderr
        assert migrate.current(load_settings(database_url=url)) == migrate.head()
    finally:
        admin = sa.create_engine(scratch.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)'))
        admin.dispose()


def test_healthchecks_fail_when_their_service_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    # In this process (the subprocess path is shown healthy below): a node nobody runs, and a
    # Flower port nothing listens on, while the stack boots.
    absent = CliRunner().invoke(cli, ["health", "worker", "--node", "absent@%h", "--timeout", "1"])
    assert absent.exit_code == 1, absent.output
    node = f"absent@{socket.gethostname()}"
    assert absent.stdout == f"worker unhealthy: {node} did not answer a ping within 1s\n"
    port = free_port()
    monkeypatch.setattr(context, "settings", lambda: load_settings(flower_port=port))
    closed = CliRunner().invoke(cli, ["health", "flower", "--timeout", "1"])
    assert closed.exit_code == 1, closed.output
    assert closed.stdout.startswith("flower unhealthy: ConnectError: ")
    assert closed.stdout.count("\n") == 1


def test_worker_starts_consumes_and_answers_its_healthcheck(stack: Containers, producer: Producer) -> None:
    stack.wait_log("worker", "ready.")
    # In a container the worker is the only one of its host; here the io worker shares the host, so
    # the default probe ("any worker of this host") may hear either.
    healthy = wait_healthy(healthcheck("worker"))
    assert healthy.startswith("worker healthy: ")
    assert healthy.endswith(f"@{socket.gethostname()} answered a ping\n")
    job = producer.submit("ping", {"message": "from the compose worker"})
    row = wait_for_state(producer.settings, job)
    assert row["state"] == "succeeded"
    assert row["worker"].startswith("worker-")
    assert row["worker"].endswith(f"@{socket.gethostname()}")


def test_io_worker_consumes_its_own_queue_with_threads(stack: Containers, producer: Producer) -> None:
    stack.wait_log("worker-io", "ready.")
    assert re.search(r"concurrency: \d+ \(thread\)", stack.log("worker-io"))
    assert wait_healthy(healthcheck("worker-io")).startswith("worker healthy: io@")
    queue = command("worker-io")[command("worker-io").index("-Q") + 1]
    job = producer.submit("ping", {"message": "io"}, queue=queue)
    row = wait_for_state(producer.settings, job)
    assert row["state"] == "succeeded"
    assert row["worker"] == f"io@{socket.gethostname()}"


def test_beat_leads_is_healthy_and_steps_down_on_sigterm(stack: Containers) -> None:
    stack.wait_log("beat", "is now the leader")
    pid = stack.running["beat"].pid  # jobs beat exec's Celery: the same pid
    line = wait_healthy(healthcheck("beat"))
    assert f"leader is jobs-leader:{socket.gethostname()}:{pid}" in line
    # docker stop: SIGTERM to the process only. Beat exits within its grace period and
    # gives the lock up, so a standby would lead at once; with no standby, beat is unhealthy.
    grace = seconds(SERVICES["beat"]["stop_grace_period"])
    os.kill(pid, signal.SIGTERM)
    assert stack.running["beat"].wait(timeout=grace) == 0, stack.log("beat")[-2000:]
    result = CliRunner().invoke(cli, healthcheck("beat"))  # in this process: only the outcome matters
    assert result.exit_code == 1, result.output
    assert result.stdout == "beat unhealthy: PostgreSQL is reachable but no beat holds the leader lock\n"


def test_flower_requires_auth_and_answers_its_healthcheck(
    stack: Containers, flower_env: dict[str, str]
) -> None:
    line = wait_healthy(healthcheck("flower"), env=flower_env)
    assert "/healthcheck answered OK" in line
    base = f"http://127.0.0.1:{flower_env['JOBS_FLOWER_PORT']}"
    assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{base}/api/workers", auth=(FLOWER_USER, "wrong"), timeout=10).status_code == 401
    authorized = httpx.get(f"{base}/api/workers", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10)
    assert authorized.status_code == 200
    assert any(stack.workdir.glob("flower.db*")), "Flower keeps its state in the working directory"


def test_worker_stops_within_its_grace_period_while_a_job_runs(stack: Containers, producer: Producer) -> None:
    """docker stop: SIGTERM to the main process; the soft shutdown hands a long job back in time.

    Last in this module: it stops the stack's worker.
    """
    stack.wait_log("worker", "ready.")
    job = producer.submit("test.effect", {"key": "shutdown", "sleep": 20.0})
    wait_for_state(producer.settings, job, ("running",))
    worker = stack.running["worker"]
    started = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    worker.wait(timeout=seconds(SERVICES["worker"]["stop_grace_period"]))
    took = time.monotonic() - started
    soft = producer.settings.worker_soft_shutdown_timeout
    assert soft <= took < soft + 10, f"stopped after {took:.1f}s with a {soft:g}s soft shutdown"
    assert "Soft Shutdown" in stack.log("worker")
    with db.transaction(producer.settings) as conn:
        state = conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job)).scalar_one()
    assert state != "succeeded", "the 20 s job finished: the worker waited instead of handing it back"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_redis_service_command_enforces_password_persistence_and_noeviction(tmp_path: Path) -> None:
    """The compose redis command line, run by a private redis-server on a free port."""
    argv = [defaults(arg, REDIS_PASSWORD="test-redis-password") for arg in SERVICES["redis"]["command"]]
    port = free_port()
    server = subprocess.Popen(
        [*argv, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        client = redis.Redis(port=port, password="test-redis-password", socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        maxmemory = client.config_get("maxmemory")["maxmemory"]
        assert maxmemory is not None
        assert int(maxmemory) > 0
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_connect_timeout=1).ping()
    finally:
        server.terminate()
        server.wait(timeout=10)
