"""Each parallel test process gets its own database and Redis db, derived from the configured ones."""

from __future__ import annotations

import pytest

from tests.support import isolation
from tests.support.isolation import IsolationError

pytestmark = pytest.mark.unit

DATABASE = "postgresql+psycopg://postgres:secret@127.0.0.1:5432/jobs_test"
BROKER = "redis://:pw@127.0.0.1:6379/11?socket_timeout=5"


def test_each_worker_gets_a_database_that_still_ends_in_test():
    assert isolation.worker_database_url(DATABASE, "gw0").endswith("@127.0.0.1:5432/jobs_gw0_test")
    assert isolation.worker_database_url(DATABASE, "gw3") == (
        "postgresql+psycopg://postgres:secret@127.0.0.1:5432/jobs_gw3_test"
    )
    assert isolation.worker_database_url(DATABASE.replace("jobs_test", "jobs_h7_test"), "gw1").endswith(
        "/jobs_h7_gw1_test"
    )


@pytest.mark.parametrize("name", ["jobs", "jobs_test_copy", "_test", "postgres"])
def test_a_database_not_named_for_tests_is_refused(name):
    with pytest.raises(IsolationError, match="must end in _test"):
        isolation.worker_database_url(DATABASE.replace("jobs_test", name), "gw0")
    with pytest.raises(IsolationError, match="must end in _test"):
        isolation.scratch_database_url(DATABASE.replace("jobs_test", name), "migrations")


def test_scratch_databases_are_named_after_the_process_database():
    worker = isolation.worker_database_url(DATABASE, "gw2")
    assert isolation.scratch_database_url(worker, "migrations").endswith("/jobs_gw2_migrations_test")
    assert isolation.scratch_database_url(DATABASE, "migrations").endswith("/jobs_migrations_test")


def test_workers_take_consecutive_redis_dbs_down_from_the_configured_one():
    assert isolation.worker_broker_urls(BROKER, 4) == [
        f"redis://:pw@127.0.0.1:6379/{db}?socket_timeout=5" for db in (11, 10, 9, 8)
    ]
    assert isolation.worker_broker_url(BROKER, "gw10", 11) == "redis://:pw@127.0.0.1:6379/1?socket_timeout=5"
    assert isolation.worker_broker_url("rediss://h:6380/15", "gw0", 1) == "rediss://h:6380/15"


@pytest.mark.parametrize(
    ("url", "count", "message"),
    [
        ("redis://127.0.0.1:6379/11", 12, "need Redis dbs 0..11"),
        ("redis://127.0.0.1:6379/3", 4, "need Redis dbs 0..3"),
        ("redis://127.0.0.1:6379/0", 1, "need Redis dbs 0..0"),
        ("redis://127.0.0.1:6379", 1, "need Redis dbs 0..0"),
        ("redis://127.0.0.1:6379/16", 1, "need Redis dbs 16..16"),
        ("redis://127.0.0.1:6379/x", 1, "must be a Redis db number"),
    ],
)
def test_a_run_that_would_leave_dbs_1_to_15_is_refused(url, count, message):
    with pytest.raises(IsolationError, match=message):
        isolation.worker_broker_urls(url, count)


def test_isolate_rewrites_a_worker_environment_once():
    environ = {
        "JOBS_DATABASE_URL": DATABASE,
        "JOBS_BROKER_URL": BROKER,
        "PYTEST_XDIST_WORKER": "gw1",
        "PYTEST_XDIST_WORKER_COUNT": "3",
    }
    isolation.isolate(environ)
    assert environ["JOBS_DATABASE_URL"].endswith("/jobs_gw1_test")
    assert environ["JOBS_BROKER_URL"] == "redis://:pw@127.0.0.1:6379/10?socket_timeout=5"
    isolation.isolate(environ)  # a process started by a test, with the same environment
    assert environ["JOBS_DATABASE_URL"].endswith("/jobs_gw1_test")
    assert environ["JOBS_BROKER_URL"].split("?")[0].endswith("/10")


def test_isolate_leaves_a_serial_run_alone():
    environ = {"JOBS_DATABASE_URL": DATABASE, "JOBS_BROKER_URL": BROKER}
    isolation.isolate(environ)
    assert environ == {"JOBS_DATABASE_URL": DATABASE, "JOBS_BROKER_URL": BROKER}


def test_isolate_refuses_an_unknown_worker_id():
    environ = {"JOBS_DATABASE_URL": DATABASE, "JOBS_BROKER_URL": BROKER, "PYTEST_XDIST_WORKER": "w1"}
    with pytest.raises(IsolationError, match="unexpected pytest-xdist worker id"):
        isolation.isolate(environ)
