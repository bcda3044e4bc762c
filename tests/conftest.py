"""Test configuration shared by every layer.

Tests run against their own database (``jobs_test``) and Redis db (11), never
the development ones; ``make test`` sets both, and the defaults below match.
The database is created if missing and migrated once per session.
"""

from __future__ import annotations

import os

os.environ.setdefault("JOBS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/jobs_test")
os.environ.setdefault("JOBS_BROKER_URL", "redis://127.0.0.1:6379/11")
os.environ.setdefault("JOBS_KIND_MODULES", "tests.support.kinds")
# Short timers so that scenarios take seconds, not the production minutes.
os.environ.setdefault("JOBS_LEADER_TICK", "0.2")
os.environ.setdefault("JOBS_RELAY_GRACE", "1")
os.environ.setdefault("JOBS_SOFT_TIME_LIMIT", "20")
os.environ.setdefault("JOBS_HARD_TIME_LIMIT", "30")
os.environ.setdefault("JOBS_LEASE_MARGIN", "5")
os.environ.setdefault("JOBS_VISIBILITY_TIMEOUT", "60")
os.environ.setdefault("JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT", "5")

pytest_plugins = ["tests.support.fixtures"]
