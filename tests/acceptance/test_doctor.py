"""``jobs doctor`` as an operator runs it: all green on a healthy platform, then each check failing in turn.

The platform here has its own ``redis-server`` (started with persistence, so
that every check can pass) and its own worker and leader processes; the
failures are real: a closed port, Redis's settings changed with CONFIG SET,
a database whose migrations are behind, the leader and the worker stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db, migrate
from jobs.settings import Settings, load_settings
from tests.support.fixtures import Processes, run_jobs, run_jobs_together
from tests.support.isolation import scratch_database_url
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.acceptance


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        client = server.client()
        client.config_set("appendonly", "yes")
        client.config_set("save", "3600 1")
        yield server


@pytest.fixture(scope="module")
def healthy(
    ledger_db: Settings, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Processes, dict[str, str]]]:
    # Doctor probes Flower's port even unconfigured (to find `jobs dev`'s): one nobody here listens on.
    env = {"JOBS_BROKER_URL": redis_server.url(14), "JOBS_FLOWER_PORT": str(free_port())}
    # This leader meets a broker the shared test ledger has not seen: it publishes the ledger's queued
    # jobs there (a new broker is treated as one that lost its data). Start from an empty ledger.
    with db.transaction(ledger_db) as conn:
        conn.execute(sa.text("TRUNCATE jobs, job_attempts, limit_slots, workflows, job_deps"))
    started = Processes(tmp_path_factory.mktemp("doctor"))
    try:
        started.start("worker", "worker", "-c", "1", "-l", "INFO", env=env)
        started.start("beat", "beat", "-l", "INFO", env=env)
        started.wait_log("worker", "ready.", timeout=90)
        started.wait_log("beat", "is now the leader", timeout=90)
        yield started, env
    finally:
        started.stop_all()


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, Any]], str]:
    """Run ``jobs doctor --json`` and the human form; returns the exit code, checks by name, text."""
    result, human = run_jobs_together(
        ("doctor", "--json", "--timeout", "3", *args), ("doctor", "--timeout", "3", *args), env=env
    )
    assert result.stderr == "", result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is (result.returncode == 0)
    assert human.returncode == result.returncode
    assert "Traceback" not in human.stdout + human.stderr
    return result.returncode, {check["name"]: check for check in report["checks"]}, human.stdout


def statuses(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: check["status"] for name, check in checks.items()}


def test_a_healthy_platform_passes_every_check(clean, healthy):
    _, env = healthy
    code, checks, text = doctor(env)
    assert code == 0, text
    with db.transaction(clean) as conn:  # the shared server may run without autovacuum: a warning
        autovacuum = "ok" if conn.execute(sa.text("SHOW autovacuum")).scalar_one() == "on" else "warn"
    assert statuses(checks) == {
        "postgresql": "ok",
        "migrations": "ok",
        "autovacuum": autovacuum,
        "leader": "ok",
        "redis": "ok",
        "redis persistence": "ok",
        "redis eviction": "ok",
        "workers": "ok",
        "kinds": "ok",
        "broker queues": "ok",
        "flower": "skip",
    }
    assert text.count("✓") == 9 + (autovacuum == "ok")
    assert ("all checks passed" if autovacuum == "ok" else "0 failed, 1 warning(s)") in text


def test_redis_unreachable(clean, healthy):
    _, env = healthy
    code, checks, text = doctor({**env, "JOBS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/14"})
    assert code == 1
    assert checks["redis"]["status"] == "fail"
    assert "Redis is unreachable" in checks["redis"]["detail"]
    assert checks["workers"]["status"] == "skip"
    assert checks["postgresql"]["status"] == "ok"
    assert "✗ redis" in text


def test_postgresql_unreachable(clean, healthy):
    _, env = healthy
    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/jobs_test"
    code, checks, text = doctor({**env, "JOBS_DATABASE_URL": down})
    assert code == 1
    assert statuses(checks)["postgresql"] == "fail"
    assert statuses(checks)["leader"] == "skip"
    assert "start PostgreSQL or fix JOBS_DATABASE_URL" in text


def test_migrations_behind(clean, healthy):
    _, env = healthy
    scratch = load_settings(database_url=scratch_database_url(clean.database_url, "cockpit_scratch"))
    migrate.create_database(scratch)
    migrate.downgrade(scratch, "base")
    migrate.upgrade(scratch, "0002")
    code, checks, text = doctor({**env, "JOBS_DATABASE_URL": scratch.database_url})
    assert code == 1
    assert checks["migrations"]["status"] == "fail"
    assert "at revision 0002" in checks["migrations"]["detail"]
    assert "jobs db upgrade" in text


@pytest.mark.parametrize(
    ("setting", "value", "check", "status"),
    [
        # A restart empties the queues; the leader re-drives them from the ledger within a tick.
        ("appendonly", "no", "redis persistence", "warn"),
        # Eviction can drop single messages silently: only the slow republish sweep finds them.
        ("maxmemory-policy", "allkeys-lru", "redis eviction", "fail"),
    ],
)
def test_redis_settings_that_cost_messages(clean, healthy, redis_server, setting, value, check, status):
    _, env = healthy
    client = redis_server.client()
    before = client.config_get(setting)[setting]
    client.config_set(setting, value)
    if setting == "appendonly":
        client.config_set("save", "")
    try:
        code, checks, _ = doctor(env)
    finally:
        client.config_set(setting, before)
        client.config_set("save", "3600 1")
    assert code == (1 if status == "fail" else 0)
    assert statuses(checks)[check] == status
    assert [name for name, found in statuses(checks).items() if found == "fail"] == (
        [check] if status == "fail" else []
    )


def test_flower_configured_but_not_running(clean, healthy):
    _, env = healthy
    code, checks, text = doctor(
        {**env, "JOBS_FLOWER_USER": "ops", "JOBS_FLOWER_PASSWORD": "x", "JOBS_FLOWER_PORT": str(free_port())}
    )
    assert code == 1
    assert checks["flower"]["status"] == "fail"
    assert "start `jobs flower`" in text


def test_no_leader(clean, healthy):
    processes, env = healthy
    processes.stop("beat")
    code, checks, _ = doctor(env)
    assert code == 1
    assert [name for name, check in checks.items() if check["status"] == "fail"] == ["leader"]


def test_no_worker_for_a_queue_with_jobs(clean, healthy):
    processes, env = healthy
    processes.stop("worker")
    submitted = run_jobs("submit", "ping", env=env)
    assert submitted.returncode == 0, submitted.stderr
    code, checks, text = doctor(env)
    assert code == 1
    assert checks["workers"]["status"] == "fail"
    assert "no live worker consumes default (1 queued)" in checks["workers"]["detail"]
    assert "jobs worker -Q default" in text
