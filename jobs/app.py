"""The one Celery app, configured from the settings (docs/architecture.md, "Celery settings").

Every choice here is tested in ``tests/integration/test_celery_settings.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery

from jobs.settings import Settings, get_settings

__all__ = ["celery_config", "create_app", "get_app"]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from the platform's settings."""
    return {
        "broker_url": settings.broker_url,
        # The ledger holds results; Celery keeps none.
        "result_backend": None,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        # JSON only: a pickle is refused before anything loads it.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once delivery; the ledger's claim makes it one run per attempt.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # Every kind runs under limits; kinds may lower them.
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.hard_time_limit,
        "worker_max_memory_per_child": settings.worker_max_memory_per_child,
        # SIGTERM: running jobs get a window to finish, then are handed back.
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_timeout,
        # No broker ETAs here (delays wait in the ledger), so an idle worker stops at once.
        "worker_enable_soft_shutdown_on_idle": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": settings.default_queue,
        "task_create_missing_queues": True,
        "task_default_priority": 5,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "socket_connect_timeout": settings.publish_timeout,
            "socket_timeout": max(settings.publish_timeout, 5.0),
            "socket_keepalive": True,
            "health_check_interval": 10,
            "retry_on_timeout": True,
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": settings.publish_timeout,
        "broker_heartbeat": 0,
        # Events for Flower: always, or from when an event consumer asks (workers.events).
        "worker_send_task_events": settings.worker_task_events == "on",
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "enable_utc": True,
        "timezone": "UTC",
    }


def create_app(settings: Settings) -> Celery:
    """A Celery app for these settings."""
    app = Celery("jobs", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


@functools.cache
def get_app() -> Celery:
    """The process-wide app."""
    return create_app(get_settings())
