"""Test configuration shared by every layer.

Tests run against their own database (``jobs_test``) and Redis db (11), never
the development ones; ``make test`` sets both, and the defaults below match.
Run in parallel (pytest-xdist), each test process gets its own database and
Redis db derived from these (``tests.support.isolation``). The database is
created if missing and migrated once per session (per process).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest

from tests.support import isolation

os.environ.setdefault("JOBS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/jobs_test")
os.environ.setdefault("JOBS_BROKER_URL", "redis://127.0.0.1:6379/11")
# Before anything reads settings (get_settings is cached), and inherited by every process a test starts.
isolation.isolate(os.environ)
os.environ.setdefault("JOBS_KIND_MODULES", "tests.support.kinds")
# Short timers so that scenarios take seconds, not the production minutes.
os.environ.setdefault("JOBS_LEADER_TICK", "0.2")
os.environ.setdefault("JOBS_RELAY_GRACE", "1")
os.environ.setdefault("JOBS_SOFT_TIME_LIMIT", "20")
os.environ.setdefault("JOBS_HARD_TIME_LIMIT", "30")
os.environ.setdefault("JOBS_LEASE_MARGIN", "5")
os.environ.setdefault("JOBS_VISIBILITY_TIMEOUT", "60")
os.environ.setdefault("JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT", "5")
os.environ.setdefault("JOBS_WORKER_HEARTBEAT", "1")

# Some sandboxes set PYTHONDONTWRITEBYTECODE: then every `jobs` subprocess compiles its imports again
# (about 3 s instead of 1). Let the subprocesses cache bytecode, outside the repository.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    os.environ.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "jobs-tests-pycache"))

pytest_plugins = ["tests.support.fixtures", "tests.support.hooks"]


def pytest_configure(config: pytest.Config) -> None:
    """Refuse, before any test runs, a parallel run whose processes cannot each have their own dbs."""
    workers = getattr(config.option, "numprocesses", None)
    if os.environ.get("PYTEST_XDIST_WORKER") or not isinstance(workers, int) or workers < 1:
        return
    try:
        isolation.worker_database_url(os.environ["JOBS_DATABASE_URL"], "gw0")
        isolation.worker_broker_urls(os.environ["JOBS_BROKER_URL"], workers)
    except isolation.IsolationError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadscope`` (pyproject's addopts), hand out tests in the units they share state in."""
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.support.scheduling import SharedStateScheduling

    return SharedStateScheduling(config, log)
