"""Flow control's measurements (platform only; bare Celery has no equivalent).

- ``drain_capped``: the drain of ``tests.bench.phases.drain`` with the ``ping`` kind under a
  concurrency cap far above what can run: every job is created ``held``, admitted at submit,
  and its finish frees its slot and looks for a waiting job in its own transaction. Compared
  with the platform's unlimited drain of the same round, it is what a limit that is never
  reached costs.
- ``slot_latency``: a cap of 1 (then 2) on ``bench.pause`` (a body of a few ms), and a batch
  submitted at once, so all but the first jobs wait ``held``. For each job admitted by a
  finish: its ``started_at`` minus the ``finished_at`` of the job whose finish admitted it.
  That job is found by time: the finish and the admission are one transaction, so the
  admitted job's ``published_at`` (the admission pass's clock) follows the finishing job's
  ``finished_at`` (that transaction's start) by a few milliseconds: the latest finish before
  an admission is taken as the one that made it (exact with a cap of 1). It spans the finish's
  transaction (the admission included) and its commit, the publish, the worker taking the
  message, and the claim.
"""

from __future__ import annotations

import bisect
import statistics
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobs import db
from jobs.limits import Limit
from jobs.schema import jobs
from tests.bench import phases
from tests.bench.kinds import PAUSE
from tests.bench.latency import percentile
from tests.bench.workers import Worker
from tests.support.limits import set_limit

__all__ = ["GENEROUS", "analyze", "drain_capped", "slot_latency"]

#: The cap of ``drain_capped``: far above the jobs that can be admitted and unfinished at once.
GENEROUS = 100_000
SLOT_LIMIT = "bench-slot"
STALL = 60.0


def drain_capped(bench: phases.Bench, n: int, tag: str) -> dict[str, Any]:
    """The platform's drain of ``n`` ``ping`` jobs under a concurrency cap that is never reached."""
    limit = Limit("bench-generous", concurrency=GENEROUS, kind="ping")
    return {"cap": GENEROUS, **phases.drain(bench, "platform", n, tag, limit=limit, filled=analyze)}


def slot_latency(bench: phases.Bench, caps: list[int], n: int, body_ms: float, tag: str) -> dict[str, Any]:
    """For each cap: ``n`` ``bench.pause`` jobs submitted at once under it, to a warm worker;
    from a slot freed (the finish that admits) to the admitted job's start."""
    bench.clear()
    found: dict[str, Any] = {"jobs": n, "body_ms": body_ms}
    worker = bench.worker("platform", tag).start()
    try:
        for cap in caps:
            set_limit(bench.settings, Limit(SLOT_LIMIT, concurrency=cap, kind=PAUSE))
            warm = bench.producer.submit_many(PAUSE, [{"ms": 0.0}] * (bench.concurrency * 2))
            _await_done(bench, worker, list(warm))
            ids: list[uuid.UUID] = list(bench.producer.submit_many(PAUSE, [{"ms": body_ms}] * n))
            analyze(bench)
            _await_done(bench, worker, ids)
            found.update({f"cap{cap}_{key}": value for key, value in _figures(bench, ids, cap).items()})
    finally:
        worker.stop()
    bench.clear()
    return found


def analyze(bench: phases.Bench) -> None:
    """Take the ledger's statistics now, as autovacuum would soon after a burst of submissions.

    The bench server runs without autovacuum, and the plans of the admission's statements
    depend on them: without statistics, the query for the next waiting jobs is planned as a
    nested loop over every waiting job for each one (docs/performance.md, "Flow control").
    """
    with db.transaction(bench.settings) as conn:
        conn.execute(sa.text("ANALYZE jobs, limit_slots, limit_keys"))


def _await_done(bench: phases.Bench, worker: Worker, ids: list[uuid.UUID]) -> None:
    """Wait until every job succeeded; a failure, a dead worker or a stall ends the run."""
    seen, last_change = -1, time.monotonic()
    while True:
        with db.transaction(bench.settings) as conn:
            done, failed = conn.execute(
                sa.select(
                    sa.func.count().filter(jobs.c.state == "succeeded"),
                    sa.func.count().filter(jobs.c.state.in_(("failed", "cancelled"))),
                ).where(jobs.c.id.in_(ids))
            ).one()
        if failed:
            raise phases.BenchError(f"{failed} {PAUSE} jobs did not succeed; see {worker.log_path}")
        if done == len(ids):
            return
        if done != seen:
            seen, last_change = done, time.monotonic()
        if not worker.alive():
            raise phases.BenchError(f"the worker exited early; see {worker.log_path}")
        if time.monotonic() - last_change > STALL:
            raise phases.BenchError(f"no progress for {STALL:g}s at {done} of {len(ids)} succeeded")
        time.sleep(0.05)


#: An admission's stamp (its pass's clock) falls this soon after the finishing transaction's start.
SAME_TRANSACTION = timedelta(milliseconds=50)


def _freed_by(finished: list[datetime], admitted: datetime) -> datetime | None:
    """The ``finished_at`` of the finish whose transaction admitted a job stamped ``admitted``: the
    latest finish at or before it, within that transaction's span; ``None`` when the job was
    admitted at submit or by the leader."""
    at = bisect.bisect_right(finished, admitted)
    if at == 0:
        return None
    freed = finished[at - 1]
    return freed if admitted - freed <= SAME_TRANSACTION else None


def _figures(bench: phases.Bench, ids: list[uuid.UUID], cap: int) -> dict[str, Any]:
    with db.transaction(bench.settings) as conn:
        rows = conn.execute(
            sa.select(jobs.c.started_at, jobs.c.finished_at, jobs.c.published_at).where(jobs.c.id.in_(ids))
        ).all()
    finished = sorted(row.finished_at for row in rows)
    # In the order they started: the first quarter ran with most of the batch still held.
    ordered = []
    for row in sorted(rows, key=lambda row: row.started_at):
        freed = _freed_by(finished, row.published_at)
        if freed is not None:
            ordered.append((row.started_at - freed).total_seconds() * 1000)
    gaps = sorted(ordered)
    if not gaps or len(gaps) < len(ids) // 2:
        raise phases.BenchError(f"cap {cap}: only {len(gaps)} of {len(ids)} jobs were admitted by a finish")
    running = _most_at_once([(row.started_at, row.finished_at) for row in rows])
    if running > cap:
        raise phases.BenchError(f"cap {cap}: {running} jobs ran at once")
    span = (max(row.finished_at for row in rows) - min(row.started_at for row in rows)).total_seconds()
    quarter = max(1, len(ordered) // 4)
    ran = [(row.finished_at - row.started_at).total_seconds() * 1000 for row in rows]
    return {
        "by_finish": len(gaps),
        "p50_ms": percentile(gaps, 50),
        "p90_ms": percentile(gaps, 90),
        "p99_ms": percentile(gaps, 99),
        "max_ms": gaps[-1],
        "first_quarter_p50_ms": statistics.median(ordered[:quarter]),
        "last_quarter_p50_ms": statistics.median(ordered[-quarter:]),
        "run_ms": statistics.median(ran),
        "rate": len(rows) / span,
        "most_running": running,
    }


def _most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The most jobs whose [started_at, finished_at] overlap (a finish before a start at the
    same instant counts first)."""
    events = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most
