"""The worker process's Celery app: every kind registered as a ledger-aware task."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from jobs import counters, db, logs
from jobs.app import get_app
from jobs.catalog import load_kinds
from jobs.settings import get_settings
from workers import batching, events, pauses, pool_batches, presence, redact, transport, watchdog
from workers import builtin as _builtin  # noqa: F401 - attaches the built-in bodies
from workers.task import register_kinds

__all__ = ["app", "build"]


def build() -> Celery:
    """Load settings and kinds, and register them on the process-wide app."""
    settings = get_settings()
    logs.install(settings)
    registry = load_kinds(settings.kind_modules)
    celery_app = get_app()
    register_kinds(celery_app, registry, settings)
    # Messages of kinds this worker lacks are handed back or recorded, not dropped (workers.unknown).
    celery_app.conf.worker_consumer = "workers.consumer:Consumer"
    transport.install()  # a malformed item on a queue is quarantined instead of stopping the worker
    pauses.install(celery_app)  # paused queues (jobs queue pause) are not consumed, even after a restart
    presence.install(celery_app, registry)  # the roster: queues, kinds and heartbeat in the ledger
    watchdog.install(celery_app)  # a consumer that stops taking messages reconnects
    events.install(celery_app)  # task events only while an event consumer (Flower) asks for them
    redact.install()  # Celery's DEBUG line per task would print the payload, secrets included
    logs.quiet_celery_tasks()  # one line per attempt outcome: the platform's (workers.runner)
    if settings.worker_batched:
        batching.install(celery_app)  # jobs worker -P batched: claims and finishes in batches
        # ... and answers remote control and sends heartbeats while its body runs (workers.mailbox).
        celery_app.conf.worker_consumer = "workers.mailbox:Consumer"
    elif settings.worker_pool_batches:
        pool_batches.install(celery_app)  # jobs worker --batches: batches in the prefork pool
    return celery_app


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A pool child must not share the parent's pooled connections.
    db.dispose_after_fork()


@signals.worker_process_shutdown.connect
def _before_exit(**_: Any) -> None:
    # A pool child ends with os._exit (no atexit): write what it counted for Prometheus first.
    counters.flush_process()


app = build()
