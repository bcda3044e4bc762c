"""Bare Celery for the benchmark: the ``ping`` body, no ledger, in two configurations.

- ``app`` (system ``celery``): ``jobs.app.celery_config(settings)`` unchanged (pool
  options come from the same command-line flags as ``jobs worker``), so the only
  difference from the platform is the ledger: no claim, no finish, no ORM session.
  Its worker runs as ``celery -A tests.bench.bare worker ...``.
- ``defaults_app`` (system ``celery-defaults``): Celery's own defaults, as users run
  it (early acks, prefetch 4 per process, no task events, no time limits), with only
  the broker and the queue's name set. Its worker runs as
  ``celery -A tests.bench.bare:defaults_app worker ...`` without ``-l`` (WARNING).

``BENCH_RESULT_BACKEND`` (set by the benchmark for its reference run) turns on
Celery's own database result backend instead.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery

from jobs.app import celery_config
from jobs.settings import get_settings

__all__ = [
    "STARTED_KEY",
    "TASK_NAME",
    "app",
    "defaults_app",
    "defaults_noop",
    "noop",
    "pause_sender",
    "sender",
]

TASK_NAME = "bench.noop"
PAUSE_NAME = "bench.pause"
STARTED_KEY = "bench:started"

_settings = get_settings()
app = Celery("bench_bare", set_as_current=False)
app.conf.update(celery_config(_settings))
if os.environ.get("BENCH_RESULT_BACKEND"):
    app.conf.update(result_backend=os.environ["BENCH_RESULT_BACKEND"], task_ignore_result=False)

_recorder: redis.Redis | None = None


# Celery's defaults; the queue is named as the platform's so that both use the same Redis list.
defaults_app = Celery("bench_defaults", set_as_current=False)
defaults_app.conf.update(broker_url=_settings.broker_url, task_default_queue=_settings.default_queue)


def _noop(self: Any, message: str = "pong", record: bool = False) -> dict[str, Any]:
    """What the ``ping`` kind's body does; with ``record``, note when the body started (latency runs)."""
    started = time.time()
    if record:
        global _recorder  # noqa: PLW0603 - one client per pool process, made on first use
        if _recorder is None:
            _recorder = redis.Redis.from_url(_settings.broker_url)
        _recorder.rpush(STARTED_KEY, f"{self.request.id} {started!r}")
    return {
        "message": message,
        "attempt": 1,
        "host": platform.node(),
        "at": datetime.now(UTC).isoformat(),
    }


def _pause(ms: float = 5.0) -> dict[str, float]:
    """What the benchmark's ``bench.pause`` kind's body does: wait ``ms`` milliseconds."""
    time.sleep(ms / 1000)
    return {"ms": ms}


noop = app.task(name=TASK_NAME, bind=True)(_noop)
defaults_noop = defaults_app.task(name=TASK_NAME, bind=True)(_noop)
pause = app.task(name=PAUSE_NAME)(_pause)
defaults_pause = defaults_app.task(name=PAUSE_NAME)(_pause)


def sender(system: str) -> Any:
    """``apply_async`` of the system's app: Celery's defaults, or the platform's settings."""
    return defaults_noop.apply_async if system == "celery-defaults" else noop.apply_async


def pause_sender(system: str) -> Any:
    """``apply_async`` of the system's ``bench.pause`` task (the I/O-bound shape)."""
    return defaults_pause.apply_async if system == "celery-defaults" else pause.apply_async
