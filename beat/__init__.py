"""The leader process: ``celery -A beat beat`` (or ``jobs beat``)."""

from __future__ import annotations

import sys

from jobs.errors import ConfigError

try:
    from jobs import logs
    from jobs.app import get_app
    from jobs.settings import get_settings

    logs.install(get_settings())
    app = get_app()
    app.conf.beat_scheduler = "beat.scheduler:LeaderScheduler"
except ConfigError as error:
    sys.exit(f"jobs: {error.message}")

__all__ = ["app"]
