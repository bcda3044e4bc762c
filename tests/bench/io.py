"""The I/O-bound shape: every job waits ``--io-ms`` (20 ms, as an HTTP call does) on a threads pool.

The no-op drain flatters nobody's real load. Here each body sleeps (``bench.pause``
for the platform, the same body as a plain task for bare Celery), and every system's
worker runs ``-P threads -c --io-concurrency`` (16): the drain is bound by how many
jobs wait at once and by what each job costs besides its wait, which is where the
ledger's two statements per job show.
"""

from __future__ import annotations

from typing import Any

from tests.bench import bare, phases
from tests.bench.kinds import PAUSE

__all__ = ["drain_io"]


def drain_io(
    bench: phases.Bench, system: str, n: int, ms: float, concurrency: int, tag: str
) -> dict[str, Any]:
    """Queue ``n`` jobs of ``ms`` milliseconds each, then time a threads worker draining them."""
    bench.clear()
    payload = {"ms": ms}
    if system == "platform":
        bench.producer.submit_many(PAUSE, [dict(payload) for _ in range(n)])
    else:
        send = bare.pause_sender(system)
        for _ in range(n):
            send(kwargs=payload)
    queued, _ = bench.depth()
    if queued != n:
        raise phases.BenchError(f"{system}: {queued} of {n} I/O-bound jobs queued")
    worker = bench.worker(system, tag, pool="threads", concurrency=concurrency).start()
    try:
        first, last, cpu = phases.watch(bench, worker, n)
    finally:
        worker.stop()
    result: dict[str, Any] = {
        "n": n,
        "ms": ms,
        "concurrency": concurrency,
        "seconds": last - first,
        "rate": n / (last - first),
        "worker_cpu_ms_per_job": cpu * 1000 / n,
        # What the pool could do if each job were only its wait.
        "ceiling_rate": concurrency * 1000 / ms,
    }
    if system == "platform":
        result.update(phases.ledger_check(bench, n))
    bench.clear()
    return result
