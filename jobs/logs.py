"""Log lines: text for people, or one JSON object per line (``JOBS_LOG_FORMAT=json``).

Job transitions are logged with ``extra`` fields (``job_id``, ``kind``,
``attempt``, ``queue``, ``state``, ``duration``) that the JSON format keeps as
keys, so a log pipeline can follow one job by its id.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from celery import signals

from jobs.settings import Settings

__all__ = ["JOB_FIELDS", "JsonFormatter", "install"]

JOB_FIELDS = ("job_id", "kind", "attempt", "max_attempts", "queue", "state", "duration", "worker")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for field in JOB_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                data[field] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def _use_json(logger: logging.Logger, **_: Any) -> None:
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def install(settings: Settings) -> None:
    """Make Celery's log set-up (worker and beat) use the configured format."""
    if settings.log_format == "json":
        signals.after_setup_logger.connect(_use_json, weak=False)
        signals.after_setup_task_logger.connect(_use_json, weak=False)
