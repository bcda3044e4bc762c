"""Prometheus metrics read from the ledger at scrape time (``jobs metrics``).

The collector runs a few aggregate queries (``jobs.observe``) on each scrape
and keeps no state, so any number of exporters can run, on any host, and a
restart loses nothing. The ledger prunes finished jobs, so totals of finished
jobs would go down; throughput and failures are therefore gauges over the
last minute (``..._last_minute``), not counters.

Flower's own ``/metrics`` covers what Celery's events say (tasks received,
started, succeeded per worker, runtimes); these cover what the ledger says
(every job, whether or not a worker saw it). ``docs/operations.md`` says which
to scrape for what.
"""

from __future__ import annotations

from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from jobs import db, observe, pauses
from jobs.errors import LedgerUnavailable
from jobs.leader import current_leader
from jobs.settings import Settings

__all__ = ["LedgerCollector", "registry", "serve"]

LIVE_STATES = observe.LIVE_STATES


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

        leads = GaugeMetricFamily("jobs_leader_up", "1 if a beat process holds the leader lock.")
        leads.add_metric([], 1 if leader else 0)
        yield leads
        if leader:
            info = GaugeMetricFamily("jobs_leader_info", "The leading beat process.", labels=["leader"])
            info.add_metric([leader], 1)
            yield info


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
