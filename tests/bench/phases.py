"""The measurements: single submit, bulk submit, end-to-end drain (the latency: ``tests.bench.latency``).

Every phase starts from an empty ledger and an empty Redis db, runs one
system, and returns plain numbers. Bare Celery and the platform are observed
the same way wherever possible: the drain is timed by watching the queue in
Redis (first message taken to last message acknowledged; with late acks a
message is acknowledged only after its body returned and, for the platform,
after the finish committed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import sqlalchemy as sa

from jobs import db
from jobs.limits import Limit
from jobs.producer import Producer
from jobs.settings import Settings
from tests.bench import backlog, bare, servers
from tests.bench.workers import PLATFORMS, Worker
from tests.support.limits import set_limit

__all__ = [
    "Bench",
    "BenchError",
    "backlog_ledger",
    "bulk",
    "bulk_cli",
    "database_cpu",
    "drain",
    "ledger_check",
    "single",
    "still_empty",
    "watch",
]

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = {"message": "pong"}
WARMUP = 50
POLL = 0.01
CONFIRM = 0.1
STALL = 120.0


class BenchError(RuntimeError):
    """A run did not complete (lost jobs, a dead worker, a stall); the round is not valid."""


@dataclass
class Bench:
    """What every phase needs: the servers, the two producers, where worker logs go."""

    settings: Settings
    client: redis.Redis
    producer: Producer
    env: dict[str, str]
    log_dir: Path
    concurrency: int
    loglevel: str = "INFO"
    queue: str = "default"
    notes: list[str] = field(default_factory=list)

    def clear(self) -> None:
        servers.clear(self.settings, self.client)

    def depth(self) -> tuple[int, int]:
        return servers.depth(self.client, self.queue)()

    def submitter(self, system: str) -> Callable[[], uuid.UUID]:
        """One submission: ``producer.submit`` for the platform, ``apply_async`` for bare Celery."""
        if system in PLATFORMS:
            submit = self.producer.submit
            return lambda: submit("ping", PAYLOAD)
        send = bare.sender(system)
        return lambda: uuid.UUID(send(kwargs=PAYLOAD).id)

    def worker(
        self, system: str, tag: str, *, pool: str = "prefork", concurrency: int | None = None
    ) -> Worker:
        """The system's worker: ``--concurrency`` prefork processes unless told otherwise."""
        env = dict(self.env)
        if system == "celery-db":
            env["BENCH_RESULT_BACKEND"] = "db+" + self.settings.database_url
        return Worker(
            system,
            concurrency=concurrency or self.concurrency,
            pool=pool,
            log_path=self.log_dir / f"{tag}-{system}.log",
            env=env,
            loglevel=self.loglevel,
        )


def single(bench: Bench, system: str, n: int) -> dict[str, Any]:
    """``n`` submissions one after the other, no worker running."""
    bench.clear()
    submit = bench.submitter(system)
    for _ in range(WARMUP):
        submit()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        submit()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    queued, _ = bench.depth()
    if queued != n + WARMUP:
        raise BenchError(f"{system}: {queued} messages in Redis after {n + WARMUP} submissions")
    bench.clear()
    return {"n": n, "seconds": seconds, "rate": n / seconds, "client_cpu_ms_per_job": cpu * 1000 / n}


def bulk(bench: Bench, n: int) -> dict[str, Any]:
    """One ``submit_many`` call of ``n`` ping jobs (all committed, all published)."""
    bench.clear()
    bench.producer.submit_many("ping", [PAYLOAD] * WARMUP)
    bench.clear()
    payloads = [dict(PAYLOAD) for _ in range(n)]
    started, cpu = time.perf_counter(), time.process_time()
    ids = bench.producer.submit_many("ping", payloads)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    _check_bulk(bench, n, published=all(i.published for i in ids))
    bench.clear()
    return {"n": n, "seconds": seconds, "rate": n / seconds, "client_cpu_ms_per_job": cpu * 1000 / n}


def bulk_cli(bench: Bench, n: int) -> dict[str, Any]:
    """``jobs submit ping --from-file`` with ``n`` lines, wall clock including the command's start-up."""
    bench.clear()
    with tempfile.TemporaryDirectory(prefix="jobs-bench-") as tmp:
        path = Path(tmp) / "jobs.jsonl"
        line = json.dumps(PAYLOAD)
        path.write_text("\n".join([line] * n) + "\n", encoding="utf-8")
        argv = [sys.executable, "-m", "jobs", "submit", "ping", "--from-file", str(path), "--json"]
        started = time.perf_counter()
        done = subprocess.run(argv, env=bench.env, cwd=ROOT, capture_output=True, check=False)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"jobs submit --from-file exited {done.returncode}: {done.stderr.decode()[-500:]}")
    _check_bulk(bench, n, published=bool(json.loads(done.stdout)["published"]))
    bench.clear()
    return {"n": n, "seconds": seconds, "rate": n / seconds}


def _check_bulk(bench: Bench, n: int, *, published: bool) -> None:
    with db.transaction(bench.settings) as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM jobs WHERE published_at IS NOT NULL")).scalar()
    queued, _ = bench.depth()
    if not published or rows != n or queued != n:
        raise BenchError(f"bulk submit: {rows} of {n} rows stamped published, {queued} messages in Redis")


def fill(bench: Bench, system: str, n: int) -> dict[str, Any]:
    """Put ``n`` jobs in the queue with no worker running: ``apply_async`` loop, or ``submit_many``."""
    started = time.perf_counter()
    if system in PLATFORMS:
        bench.producer.submit_many("ping", [dict(PAYLOAD) for _ in range(n)])
    else:
        # The worker keeps a result only if the message asks for one (the producer's ignore_result).
        options: dict[str, Any] = {"ignore_result": False} if system == "celery-db" else {}
        send = bare.sender(system)
        for _ in range(n):
            send(kwargs=PAYLOAD, **options)
    seconds = time.perf_counter() - started
    queued, unacked = bench.depth()
    if (queued, unacked) != (n, 0):
        raise BenchError(f"{system}: queue holds {queued} (+{unacked} unacked) after filling {n}")
    return {"fill_seconds": seconds, "fill_rate": n / seconds}


def drain(
    bench: Bench,
    system: str,
    n: int,
    tag: str,
    backlog: int = 0,
    limit: Limit | None = None,
    filled: Callable[[Bench], None] | None = None,
) -> dict[str, Any]:
    """Fill the queue, start a worker, time the first message taken to the last one acknowledged.

    With ``backlog``, that many more jobs wait behind the ``n`` timed ones (in
    Redis and, for the platform, in the ledger): the timing stops once ``n``
    are done, so it shows what a long queue costs each job. With ``limit`` (the
    platform), the jobs run under it (``tests.bench.flow``); ``filled`` runs once the queue is full.
    """
    bench.clear()
    if limit is not None:
        set_limit(bench.settings, limit)
    result: dict[str, Any] = {"n": n, "backlog": backlog, **fill(bench, system, n + backlog)}
    if filled is not None:
        filled(bench)
    before = costs(bench)
    worker = bench.worker(system, tag).start()
    try:
        first, last, cpu = watch(bench, worker, n + backlog, leave=backlog)
        db_cpu = database_cpu(bench, worker)
    finally:
        worker.stop()
    time.sleep(1.0)  # PostgreSQL's backends have exited and flushed their statistics
    spent = {name: value - before[name] for name, value in costs(bench).items()}
    result.update(
        seconds=last - first,
        rate=n / (last - first),
        worker_cpu_ms_per_job=cpu * 1000 / n,
        database_cpu_ms_per_job=db_cpu * 1000 / n,
        peak_rss_mib=worker.peak_rss / 2**20,
        peak_pss_mib=worker.peak_pss / 2**20,
        processes=worker.processes,
        wal_bytes_per_job=spent["wal"] / (n + backlog),
        commits_per_job=spent["commits"] / (n + backlog),
        redis_commands_per_job=spent["redis"] / (n + backlog),
    )
    if system in PLATFORMS:
        result.update(ledger_check(bench, n, backlog, limited=limit is not None))
    elif system == "celery-db":
        result.update(_results_check(bench, n))
    bench.clear()
    return result


def watch(bench: Bench, worker: Worker, n: int, leave: int = 0) -> tuple[float, float, float]:
    """When the first message was taken and the last acknowledged, and the worker's CPU seconds between.

    ``n``: the messages queued when the worker started (a workflow's first steps; the others
    are published as they are released, before their parent's message is acknowledged). With
    ``leave``, the last one is the one that leaves ``leave`` messages waiting.
    """
    first: float | None = None
    cpu_at_first = 0.0
    last_change = time.monotonic()
    seen = (n, 0)
    while True:
        now = time.perf_counter()
        queued, unacked = bench.depth()
        if first is None and (queued < n or unacked > 0):
            first = now
            cpu_at_first = worker.cpu_seconds()
        if (queued, unacked) != seen:
            seen = (queued, unacked)
            last_change = time.monotonic()
        if first is not None and leave and queued + unacked <= leave:
            return first, now, worker.cpu_seconds() - cpu_at_first
        if first is not None and queued == 0 and unacked == 0 and still_empty(bench):
            return first, now, worker.cpu_seconds() - cpu_at_first
        if not worker.alive():
            raise BenchError(f"the worker exited early; see {worker.log_path}")
        if time.monotonic() - last_change > STALL:
            raise BenchError(f"no progress for {STALL:g}s at {queued} queued, {unacked} unacked")
        time.sleep(POLL)


def still_empty(bench: Bench) -> bool:
    """Whether the queue stays empty: kombu takes a message (BRPOP) before it records it as unacked.

    For an instant the last message is in neither place; looking again a little
    later tells a finished drain from one whose last message is in flight.
    """
    time.sleep(CONFIRM)
    return bench.depth() == (0, 0)


#: Redis commands the bench itself sends while it watches a drain (``servers.Depth``, ``costs``).
_WATCHING = frozenset({"cmdstat_llen", "cmdstat_hlen", "cmdstat_info"})


def costs(bench: Bench) -> dict[str, float]:
    """Counters whose growth over a drain is what it cost (worker start-up and stop included):
    WAL bytes written (the whole PostgreSQL server), transactions committed in the bench's
    database, and Redis commands (the whole server, less the watcher's own)."""
    with db.transaction(bench.settings) as conn:
        wal = conn.execute(sa.text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).scalar_one()
        commits = conn.execute(
            sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()
    stats: dict[str, Any] = bench.client.info("commandstats")
    calls = sum(int(stat["calls"]) for name, stat in stats.items() if name not in _WATCHING)
    return {"wal": float(wal), "commits": float(commits), "redis": float(calls)}


def database_cpu(bench: Bench, worker: Worker) -> float:
    """CPU seconds used so far by the PostgreSQL backends serving this worker (none for bare Celery)."""
    port = sa.make_url(bench.settings.database_url).port or 5432
    ports = worker.client_ports(port)
    if not ports:
        return 0.0
    with db.transaction(bench.settings) as conn:
        pids = conn.execute(
            sa.text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND client_port = ANY(:p)"
            ),
            {"p": ports},
        ).scalars()
        total = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total


def ledger_check(bench: Bench, n: int, backlog: int = 0, *, limited: bool = False) -> dict[str, Any]:
    """Every job succeeded, once, with its attempt recorded; the ledger's own first-start-to-last-finish.

    With a backlog, the worker was stopped after ``n`` jobs: at least ``n`` succeeded, none twice.
    Every job was under the limit when ``limited``, else none; a finished job keeps no slot row.
    """
    with db.transaction(bench.settings) as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE state = 'succeeded' AND attempt = 1 AND result IS NOT NULL)"
                " AS ok, count(*) AS total, count(*) FILTER (WHERE limited) AS limited,"
                " (SELECT count(*) FROM limit_slots s JOIN jobs j ON j.id = s.job_id"
                "  WHERE j.state = 'succeeded') AS slots_left,"
                " extract(epoch FROM max(finished_at) - min(started_at)) AS span FROM jobs"
            )
        ).one()
        attempts = conn.execute(
            sa.text(
                "SELECT count(*) FROM job_attempts WHERE outcome = 'succeeded' AND finished_at IS NOT NULL"
            )
        ).scalar()
        durable = conn.execute(sa.text("SHOW synchronous_commit")).scalar()
    complete = row.ok == n if not backlog else row.ok >= n
    if not complete or row.total != n + backlog or attempts != row.ok:
        raise BenchError(f"ledger: {row.ok} of {n} jobs succeeded once, {attempts} attempts recorded")
    if row.limited != (row.total if limited else 0) or row.slots_left:
        raise BenchError(f"ledger: {row.limited} of {row.total} jobs limited, {row.slots_left} slots left")
    span = float(row.span)
    return {
        "ledger_seconds": span,
        "ledger_rate": row.ok / span,
        "recorded": row.ok,
        "synchronous_commit": durable,
    }


def _results_check(bench: Bench, n: int) -> dict[str, Any]:
    with db.transaction(bench.settings) as conn:
        stored = conn.execute(
            sa.text("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
        ).scalar()
    if stored != n:
        raise BenchError(f"celery-db: {stored} of {n} results stored")
    return {"recorded": stored}


def backlog_ledger(bench: Bench, sizes: list[int], probe: int) -> dict[str, Any]:
    """Claim + body + finish in this process with each backlog size queued in the ledger (no Celery)."""
    bench.clear()
    found = {str(size): backlog.claim_finish(bench.settings, size, probe) for size in sizes}
    bench.clear()
    return found
