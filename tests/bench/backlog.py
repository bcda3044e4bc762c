"""Claim and finish against a growing backlog: they must stay index lookups, O(log n) in queued jobs.

For each backlog size the ledger is filled with queued ``ping`` rows (by
COPY, which is test set-up, not the platform's submit path), then a sample of
them runs through ``workers.runner.run`` in this process: the worker's exact
claim, body and finish, without Celery. The plans of the claim and the
finish are taken with ``EXPLAIN`` on the same statements.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from jobs import db
from jobs.catalog import load_kinds
from jobs.settings import Settings

__all__ = ["claim_finish"]

PLAN_NODE = re.compile(r"(?:Index Scan|Index Only Scan|Bitmap Heap Scan|Seq Scan)(?: using \w+)? on \w+")


def _fill(settings: Settings, size: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(size)]
    payload = json.dumps({"message": "pong"})
    raw = db.engine(settings).raw_connection()
    try:
        with raw.cursor() as cursor:  # type: ignore[attr-defined]  # psycopg's is a context manager
            copy_sql = "COPY jobs (id, kind, queue, priority, payload, state, max_attempts) FROM STDIN"
            with cursor.copy(copy_sql) as copy:
                for job in ids:
                    copy.write_row((job, "ping", "default", 5, payload, "queued", 5))
            cursor.execute("ANALYZE jobs")
            cursor.execute("ANALYZE job_attempts")
        raw.commit()
    finally:
        raw.close()
    return ids


def _plans(settings: Settings, statements: list[tuple[str, Any]]) -> list[str]:
    """The scan nodes of each captured statement's plan (EXPLAIN without running it)."""
    found = []
    raw = db.engine(settings).raw_connection()
    try:
        with raw.cursor() as cursor:  # type: ignore[attr-defined]  # psycopg's is a context manager
            for statement, params in statements:
                cursor.execute("EXPLAIN (COSTS OFF) " + statement, params)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                found.append("; ".join(sorted({m.group(0).strip() for m in PLAN_NODE.finditer(plan)})))
        raw.rollback()
    finally:
        raw.close()
    return found


def claim_finish(settings: Settings, size: int, probe: int) -> dict[str, Any]:
    """Per-job time of claim + body + finish with ``size`` queued jobs in the ledger."""
    import workers.builtin  # noqa: F401 - attaches the ping body
    from workers import runner

    registry = load_kinds(settings.kind_modules)
    with db.transaction(settings) as conn:
        conn.execute(sa.text("TRUNCATE jobs, job_attempts, limit_slots, workflows, job_deps"))
    ids = _fill(settings, size)
    sample = random.sample(ids, min(probe, size))

    def delivery(job: uuid.UUID) -> runner.Delivery:
        return runner.Delivery(job, "ping", {"message": "pong"}, "default", 5, "bench@backlog")

    for job in sample[:20]:
        runner.run(settings, registry, delivery(job))
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().startswith("WITH") and len(captured) < 2:
            captured.append((statement, params))

    engine = db.engine(settings)
    event.listen(engine, "before_cursor_execute", capture)
    try:
        runner.run(settings, registry, delivery(sample[20]))
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    times = []
    for job in sample[21:]:
        started = time.perf_counter()
        runner.run(settings, registry, delivery(job))
        times.append((time.perf_counter() - started) * 1000)
    plans = _plans(settings, captured)
    with db.transaction(settings) as conn:
        succeeded = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE state = 'succeeded'")).scalar()
        conn.execute(sa.text("TRUNCATE jobs, job_attempts, limit_slots, workflows, job_deps"))
    return {
        "backlog": size,
        "probed": len(times),
        "succeeded": succeeded,
        "median_ms_per_job": statistics.median(times),
        "p90_ms_per_job": statistics.quantiles(times, n=10)[-1],
        "claim_plan": plans[0] if plans else "",
        "finish_plan": plans[1] if len(plans) > 1 else "",
    }
