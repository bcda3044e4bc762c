"""Submit-to-start latency: a steady trickle of jobs to a warm, idle worker, for both systems.

From just before the submit call to the start of the body: bare Celery's body stamps its start
into a Redis list (``tests.bench.bare``); the platform's start is the claim's ``started_at``.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from jobs import db
from tests.bench import bare
from tests.bench.phases import PAYLOAD, POLL, Bench, BenchError, still_empty
from tests.bench.workers import PLATFORMS, Worker

__all__ = ["percentile", "submit_to_start"]


def submit_to_start(bench: Bench, system: str, jobs: int, rate: float, tag: str) -> dict[str, Any]:
    """Submit ``jobs`` jobs at a steady ``rate`` to a warm, idle worker; submit call to body start."""
    bench.clear()
    submit = bench.submitter(system)
    send = bare.sender(system)
    worker = bench.worker(system, tag).start()
    try:
        for _ in range(bench.concurrency * 2):
            submit() if system in PLATFORMS else send(kwargs={**PAYLOAD, "record": True})
        _settle(bench, worker, timeout=60.0)
        bench.client.delete(bare.STARTED_KEY)
        submitted: dict[uuid.UUID, float] = {}
        begin = time.perf_counter()
        for i in range(jobs):
            pause = begin + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            at = time.time()
            if system in PLATFORMS:
                submitted[submit()] = at
            else:
                submitted[uuid.UUID(send(kwargs={**PAYLOAD, "record": True}).id)] = at
        _settle(
            bench, worker, timeout=60.0, done=lambda: len(_starts(bench, system, list(submitted))) == jobs
        )
    finally:
        worker.stop()
    starts = _starts(bench, system, list(submitted))
    if len(starts) != jobs:
        raise BenchError(f"{system}: {len(starts)} of {jobs} latency jobs recorded a start")
    waits = sorted((starts[job] - at) * 1000 for job, at in submitted.items())
    bench.clear()
    return {
        "jobs": jobs,
        "rate": rate,
        "p50_ms": percentile(waits, 50),
        "p90_ms": percentile(waits, 90),
        "p99_ms": percentile(waits, 99),
        "max_ms": waits[-1],
        "mean_ms": statistics.fmean(waits),
    }


def _settle(bench: Bench, worker: Worker, timeout: float, done: Callable[[], bool] = lambda: True) -> None:
    """Wait until the queue is empty, nothing is unacknowledged, and ``done()`` holds."""
    deadline = time.monotonic() + timeout
    while bench.depth() != (0, 0) or not still_empty(bench) or not done():
        if not worker.alive():
            raise BenchError(f"the worker exited early; see {worker.log_path}")
        if time.monotonic() > deadline:
            raise BenchError(f"the worker did not empty the queue in {timeout:g}s; see {worker.log_path}")
        time.sleep(POLL)


def _starts(bench: Bench, system: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, float]:
    """When each job's body began: the claim's ``started_at`` (platform), or the body's own stamp."""
    if system in PLATFORMS:
        with db.transaction(bench.settings) as conn:
            rows = conn.execute(
                sa.text("SELECT id, extract(epoch FROM started_at) FROM jobs WHERE id = ANY(:ids)"),
                {"ids": ids},
            ).all()
        return {row[0]: float(row[1]) for row in rows if row[1] is not None}
    stamps = {}
    for raw in bench.client.lrange(bare.STARTED_KEY, 0, -1):
        job, at = (raw.decode() if isinstance(raw, bytes) else raw).split()
        stamps[uuid.UUID(job)] = float(at)
    return {job: stamps[job] for job in ids if job in stamps}


def percentile(ordered: list[float], pct: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(pct) - 1]
