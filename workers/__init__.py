"""The worker process: ``celery -A workers worker`` (or ``jobs worker``)."""

from __future__ import annotations

import sys

from jobs.errors import ConfigError

try:
    from workers.app import app
except ConfigError as error:
    sys.exit(f"jobs: {error.message}")

__all__ = ["app"]
