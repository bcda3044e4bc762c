"""Prometheus metrics read from the ledger at scrape time (``jobs metrics``).

The collector runs a few aggregate queries (``jobs.observe``) on each scrape
and keeps no state, so any number of exporters can run, on any host, and a
restart loses nothing. Gauges say what the ledger holds now (jobs by queue and
state, the oldest wait, pauses, the leader, the last minute's throughput).
Counters and histograms (jobs finished, attempts, queue wait, run time) come
from the ``counters`` table, which the processes that end attempts add to
(``jobs.counters``): the ledger prunes finished jobs, so totals cannot be
counted from its rows, and these only ever go up.

Flower's own ``/metrics`` covers what Celery's events say (tasks received,
started, succeeded per worker, runtimes); these cover what the ledger says
(every job, whether or not a worker saw it). ``docs/operations.md`` says which
to scrape for what.

Limits (flow control) are gauges per limit and key; a limit with many keys
(one per tenant, say) shows its ``LIMIT_KEYS`` busiest keys and sums the rest
under ``key="other"``, so a scrape's size does not grow with the tenants.
"""

from __future__ import annotations

from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from jobs import broker, counters, db, limit_store, limit_usage, observe, pauses, roster
from jobs.errors import LedgerUnavailable
from jobs.leader import current_leader
from jobs.settings import Settings

__all__ = ["LedgerCollector", "registry", "serve"]

LIVE_STATES = observe.LIVE_STATES
#: Keys per limit with series of their own; the rest are summed under ``key="other"``.
LIMIT_KEYS = 20


class LedgerCollector(Collector):
    """Reads the ledger on every scrape; ``jobs_ledger_up`` is 0 when PostgreSQL is unreachable."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("jobs_ledger_up", "1 if the ledger (PostgreSQL) answered this scrape.")
        try:
            with db.transaction(self.settings) as conn:
                queues = observe.queue_stats(conn)
                paused = pauses.paused(conn)
                kinds = observe.kind_activity(conn)
                attempts = observe.attempt_outcomes(conn)
                leader = current_leader(conn)
                totals = counters.read(conn)
                fleet = roster.members(conn, dead_after=self.settings.worker_dead_after, include_dead=True)
                limits = limit_store.list_limits(conn)
                limited = limit_usage.usage(conn, top=LIMIT_KEYS)
        except LedgerUnavailable:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        by_state = GaugeMetricFamily(
            "jobs_jobs", "Live jobs in the ledger, by queue and state.", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "jobs_oldest_waiting_seconds",
            "Age of the longest-waiting queued job, by queue (0 when none waits).",
            labels=["queue"],
        )
        is_paused = GaugeMetricFamily("jobs_queue_paused", "1 if the queue is paused.", labels=["queue"])
        for name in sorted(set(queues) | set(paused)):
            stats = queues.get(name)
            for state in LIVE_STATES:
                by_state.add_metric([name, state], stats.states.get(state, 0) if stats else 0)
            oldest.add_metric([name], (stats.oldest_waiting or 0.0) if stats else 0.0)
            is_paused.add_metric([name], 1 if name in paused else 0)
        yield by_state
        yield oldest
        yield is_paused

        finished = GaugeMetricFamily(
            "jobs_finished_last_minute",
            "Jobs that reached a terminal state in the last 60 seconds, by kind and state.",
            labels=["kind", "state"],
        )
        for activity in kinds:
            finished.add_metric([activity.kind, "succeeded"], activity.succeeded)
            finished.add_metric([activity.kind, "failed"], activity.failed)
            finished.add_metric([activity.kind, "cancelled"], activity.cancelled)
        yield finished

        tried = GaugeMetricFamily(
            "jobs_attempts_last_minute",
            "Attempts that ended in the last 60 seconds, by kind and outcome "
            "(succeeded, error, lost, cancelled).",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), count in sorted(attempts.items()):
            tried.add_metric([kind, outcome], count)
        yield tried

        yield from _totals(totals)
        yield from _limits(limits, limited)

        leads = GaugeMetricFamily("jobs_leader_up", "1 if a beat process holds the leader lock.")
        leads.add_metric([], 1 if leader else 0)
        yield leads
        if leader:
            info = GaugeMetricFamily("jobs_leader_info", "The leading beat process.", labels=["leader"])
            info.add_metric([leader], 1)
            yield info

        live = GaugeMetricFamily(
            "jobs_workers",
            "Workers in the roster: alive (recent heartbeat) or silent (no heartbeat for three periods"
            " and no clean stop).",
            labels=["state"],
        )
        live.add_metric(["alive"], sum(member.alive for member in fleet))
        live.add_metric(["silent"], sum(not member.alive and member.stopped_at is None for member in fleet))
        yield live
        yield from _quarantine(self.settings)


def _limits(
    limits: list[limit_store.LimitRow], used: dict[str, list[limit_usage.KeyUsage]]
) -> Iterator[Metric]:
    """Per limit and key: jobs running under it and held jobs waiting for it; each cap."""
    running = GaugeMetricFamily(
        "jobs_limit_running",
        "Jobs admitted by a limit and not finished (queued or running), by limit and key"
        f' (the {LIMIT_KEYS} busiest keys of a limit; key="other" sums the rest).',
        labels=["limit", "key"],
    )
    waiting = GaugeMetricFamily(
        "jobs_limit_waiting",
        f"Held jobs waiting for a limit, by limit and key (the {LIMIT_KEYS} busiest keys of a limit;"
        ' key="other" sums the rest).',
        labels=["limit", "key"],
    )
    cap = GaugeMetricFamily(
        "jobs_limit_concurrency",
        "A concurrency limit's cap (per key when the limit has a key).",
        labels=["limit"],
    )
    for row in limits:
        if row.concurrency is not None:
            cap.add_metric([row.name], row.concurrency)
        for key in used.get(row.name, []):
            running.add_metric([row.name, key.label], key.running)
            waiting.add_metric([row.name, key.label], key.waiting)
    yield running
    yield waiting
    yield cap


def _quarantine(settings: Settings) -> Iterator[Metric]:
    """Malformed items workers took off the queues (``workers.transport``), read from Redis."""
    up = GaugeMetricFamily("jobs_broker_up", "1 if the broker (Redis) answered this scrape.")
    try:
        held = broker.quarantined(broker.client(settings, timeout=settings.publish_timeout))
    except Exception:  # Redis is away: say so, and leave its numbers out
        up.add_metric([], 0)
        yield up
        return
    up.add_metric([], 1)
    yield up
    total = CounterMetricFamily(
        "jobs_quarantined",
        "Malformed items workers took off the queues and quarantined (since Redis last lost its data).",
    )
    total.add_metric([], held.total)
    yield total
    kept = GaugeMetricFamily(
        "jobs_quarantine_items", f"Items kept in the Redis list {broker.QUARANTINE} (the newest 1,000)."
    )
    kept.add_metric([], held.kept)
    yield kept


def _totals(rows: list[counters.Row]) -> Iterator[Metric]:
    """The counters and histograms of the ``counters`` table."""
    finished = CounterMetricFamily(
        "jobs_finished",
        "Jobs that reached a terminal state, by kind, queue and state (succeeded, failed, cancelled).",
        labels=["kind", "queue", "state"],
    )
    attempts = CounterMetricFamily(
        "jobs_attempts",
        "Attempts that ended, by kind, queue and outcome (succeeded, error, lost, cancelled).",
        labels=["kind", "queue", "outcome"],
    )
    plain = {counters.FINISHED: finished, counters.ATTEMPTS: attempts}
    histograms = {
        counters.QUEUE_WAIT: HistogramMetricFamily(
            "jobs_queue_wait_seconds",
            "Seconds from when a job could run (created, or due after a delay, a retry or a lost"
            " lease) to its claim by a worker, by kind and queue; one observation per attempt.",
            labels=["kind", "queue"],
        ),
        counters.RUN_TIME: HistogramMetricFamily(
            "jobs_run_seconds",
            "Seconds from claim to recorded outcome of the attempts workers finished"
            " (succeeded or error), by kind and queue.",
            labels=["kind", "queue"],
        ),
    }
    grouped: dict[tuple[str, str, str], list[counters.Row]] = {}
    for row in rows:
        if row.metric in plain:
            plain[row.metric].add_metric([row.kind, row.queue, row.outcome], row.value)
        elif row.metric in histograms:
            grouped.setdefault((row.metric, row.kind, row.queue), []).append(row)
    yield finished
    yield attempts
    for (metric, kind, queue), found in grouped.items():
        buckets, total = counters.histogram(found)
        histograms[metric].add_metric([kind, queue], buckets, total)
    yield from histograms.values()


def registry(settings: Settings) -> CollectorRegistry:
    """A registry holding only the ledger's metrics (no process metrics of the exporter itself)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(LedgerCollector(settings))
    return found


def serve(settings: Settings, address: str, port: int) -> WSGIServer:
    """Serve ``/metrics`` on ``address:port`` in a background thread; returns the server."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=address, registry=registry(settings))
    return server
