"""Log lines: text for people, or one JSON object per line (``JOBS_LOG_FORMAT=json``).

Job transitions are logged with ``extra`` fields (``job_id``, ``kind``,
``attempt``, ``queue``, ``state``, ``duration``, ``next_run_at``) that the JSON
format keeps as keys, so a log pipeline can follow one job by its id.

In a worker, Celery's own INFO line per task ("Task x[id] received",
"succeeded in", "retry:", "raised expected", "ignored") is demoted to DEBUG
(``CeleryTaskLines``): the platform logs one line per attempt outcome
(``workers.runner``). Celery's warnings and errors are kept as they are.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # neither is imported at run time: the batched supervisor logs through plain() alone
    from jobs.settings import Settings

__all__ = [
    "CELERY_TASK_LOGGERS",
    "JOB_FIELDS",
    "CeleryTaskLines",
    "JsonFormatter",
    "install",
    "plain",
    "quiet_celery_tasks",
]

JOB_FIELDS = (
    "job_id", "kind", "attempt", "max_attempts", "queue", "state", "duration", "next_run_at", "worker",
)  # fmt: skip

#: Celery's loggers that write one INFO line per task.
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.worker.request")


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


class CeleryTaskLines(logging.Filter):
    """Demotes Celery's per-task INFO lines to DEBUG (shown only when DEBUG is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_celery_tasks() -> None:
    """Attach ``CeleryTaskLines`` to Celery's per-task loggers (once per process)."""
    for name in CELERY_TASK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, CeleryTaskLines) for existing in logger.filters):
            logger.addFilter(CeleryTaskLines())


def _use_json(logger: logging.Logger, **_: Any) -> None:
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def install(settings: Settings) -> None:
    """Make Celery's log set-up (worker and beat) use the configured format."""
    from celery import signals

    if settings.log_format == "json":
        signals.after_setup_logger.connect(_use_json, weak=False)
        signals.after_setup_task_logger.connect(_use_json, weak=False)


def plain(log_format: str, level: str = "INFO") -> None:
    """Log set-up for a process that is not Celery's (``jobs worker -P batched``'s supervisor):
    stderr, in ``JOBS_LOG_FORMAT``'s format, Celery's text layout for the text format."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]  # the jobs command's own (errors only) gives way
    root.setLevel(level.upper())
