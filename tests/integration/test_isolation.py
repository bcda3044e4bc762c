"""This test process works in its own database and Redis db, and the processes it starts inherit them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from jobs import db
from jobs.settings import get_settings
from tests.support.fixtures import ROOT
from tests.support.isolation import broker_db

pytestmark = pytest.mark.integration

SHOW = (
    "import json; from jobs.settings import get_settings; s = get_settings();"
    " print(json.dumps([s.database_url, s.broker_url]))"
)


def test_settings_name_this_process_database_and_redis_db(ledger_db, broker):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # The URLs were derived before anything read (and cached) the settings.
    assert (ledger_db.database_url, ledger_db.broker_url) == (
        os.environ["JOBS_DATABASE_URL"],
        os.environ["JOBS_BROKER_URL"],
    )
    # (Equal, not the same object: a unit test may have emptied the settings cache since.)
    assert (get_settings().database_url, get_settings().broker_url) == (
        ledger_db.database_url,
        ledger_db.broker_url,
    )
    with db.transaction(ledger_db) as conn:
        name = conn.execute(sa.select(sa.func.current_database())).scalar_one()
    assert name == sa.make_url(ledger_db.database_url).database
    assert broker.connection_pool.connection_kwargs["db"] == broker_db(ledger_db.broker_url)
    if worker is not None:
        assert name.endswith(f"_{worker}_test")


def test_a_started_process_sees_the_same_database_and_redis_db(ledger_db):
    # As `jobs` commands, workers and leaders started by a test do (they never load the conftest).
    shown = subprocess.run(
        [sys.executable, "-c", SHOW], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(shown.stdout) == [ledger_db.database_url, ledger_db.broker_url]
