"""The benchmark's own database (``jobs_bench``) and Redis db (12): checks, set-up, clean-up, queue depth."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import psutil
import redis
import sqlalchemy as sa

from jobs import db, ledger, migrate
from jobs.settings import Settings

__all__ = [
    "BENCH_BROKER_URL",
    "BENCH_DATABASE_URL",
    "Depth",
    "clear",
    "depth",
    "describe",
    "guard",
    "prepare",
    "with_bench_kinds",
]

BENCH_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/jobs_bench"
BENCH_BROKER_URL = "redis://127.0.0.1:6379/12"

BENCH_KINDS = "tests.bench.kinds"
PRIORITY_SEP = "\x06\x16"
CELERY_TABLES = ("celery_taskmeta", "celery_tasksetmeta")


def with_bench_kinds(modules: str) -> str:
    """``JOBS_KIND_MODULES`` with the benchmark's own kind module added (``tests.bench.kinds``)."""
    names = [name.strip() for name in modules.split(",") if name.strip()]
    return ",".join(dict.fromkeys([*names, BENCH_KINDS]))


def guard(settings: Settings) -> None:
    """Refuse to touch anything but a ``*_bench`` database and a Redis db other than 0."""
    name = sa.make_url(settings.database_url).database or ""
    if not name.endswith("_bench"):
        sys.exit(f"the benchmark refuses database {name!r}: its name must end in _bench")
    client = redis.Redis.from_url(settings.broker_url)
    if int(client.connection_pool.connection_kwargs.get("db", 0)) == 0:
        sys.exit("the benchmark never uses Redis db 0: set JOBS_BROKER_URL to another db")


def prepare(settings: Settings) -> None:
    """Create the bench database if missing and migrate it to the newest schema."""
    migrate.create_database(settings)
    migrate.upgrade(settings)


def clear(settings: Settings, client: redis.Redis) -> None:
    """Empty the ledger (limits included) and this Redis db's keys (kombu's bindings stay), and
    Celery's result tables."""
    with db.transaction(settings) as conn:
        conn.execute(
            sa.text("TRUNCATE jobs, job_attempts, limits, limit_slots, limit_keys, workflows, job_deps")
        )
        for table in CELERY_TABLES:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    ledger.forget_targets()
    keys = [key for key in client.scan_iter(count=1000) if not key.startswith(b"_kombu.binding")]
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


class Depth:
    """Messages waiting in one queue (all its priority lists) and delivered but not yet acknowledged."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.keys = [queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in range(1, 10))]

    def __call__(self) -> tuple[int, int]:
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys:
            pipe.llen(key)
        pipe.hlen("unacked")
        *lengths, unacked = pipe.execute()
        return sum(lengths), unacked


def depth(client: redis.Redis, queue: str) -> Depth:
    return Depth(client, queue)


def describe(settings: Settings, client: redis.Redis) -> dict[str, Any]:
    """The machine and the servers, for the report."""
    with db.transaction(settings) as conn:
        pg_version = conn.execute(sa.text("SHOW server_version")).scalar()
        pg = {
            name: conn.execute(sa.text(f"SHOW {name}")).scalar()
            for name in ("synchronous_commit", "fsync", "wal_sync_method", "shared_buffers", "autovacuum")
        }
    cpu_model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "")
    except OSError:
        pass
    server = client.info("server")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "celery": metadata.version("celery"),
        "kombu": metadata.version("kombu"),
        "sqlalchemy": metadata.version("sqlalchemy"),
        "psycopg": metadata.version("psycopg"),
        "redis_server": server.get("redis_version"),
        "postgresql": pg_version,
        "postgresql_settings": pg,
        "database": db.safe_url(settings.database_url),
        "broker": settings.broker_url,
    }
