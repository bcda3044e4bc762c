"""The built-in PostgreSQL kinds, run by a real worker against the real database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jobs import db
from jobs.errors import InvalidPayload
from tests.support.fixtures import wait_for_state

pytestmark = pytest.mark.integration


@pytest.fixture
def catalog(clean):
    with db.transaction(clean) as conn:
        conn.exec_driver_sql("DROP MATERIALIZED VIEW IF EXISTS test_totals")
        conn.exec_driver_sql("DROP TABLE IF EXISTS test_orders")
        conn.exec_driver_sql("CREATE TABLE test_orders (id serial PRIMARY KEY, amount int NOT NULL)")
        conn.exec_driver_sql(
            "CREATE MATERIALIZED VIEW test_totals AS SELECT sum(amount) AS total FROM test_orders"
        )
        conn.exec_driver_sql("INSERT INTO test_orders (amount) VALUES (5), (7)")
    yield clean
    with db.transaction(clean) as conn:
        conn.exec_driver_sql("DROP MATERIALIZED VIEW IF EXISTS test_totals")
        conn.exec_driver_sql("DROP TABLE IF EXISTS test_orders")


def total(settings) -> int | None:
    with db.transaction(settings) as conn:
        return conn.execute(sa.text("SELECT total FROM test_totals")).scalar()


def test_refresh_materialized_view_runs_in_the_jobs_transaction(producer, worker, catalog):
    assert total(catalog) is None
    job = producer.submit("pg.refresh_materialized_view", {"name": "test_totals"})
    row = wait_for_state(catalog, job)
    assert row["state"] == "succeeded", row["error"]
    assert row["result"] == {"refreshed": "public.test_totals"}
    assert total(catalog) == 12


def reltuples(settings) -> float:
    with db.transaction(settings) as conn:
        return float(
            conn.execute(sa.text("SELECT reltuples FROM pg_class WHERE relname = 'test_orders'")).scalar_one()
        )


def test_vacuum_analyze_runs_outside_a_transaction(producer, worker, catalog):
    assert reltuples(catalog) == -1  # never analyzed
    job = producer.submit("pg.vacuum_analyze", {"name": "public.test_orders"})
    row = wait_for_state(catalog, job)
    assert row["state"] == "succeeded", row["error"]
    assert reltuples(catalog) == 2  # VACUUM (ANALYZE) counted the table's rows


@pytest.mark.parametrize("kind", ["pg.refresh_materialized_view", "pg.vacuum_analyze"])
def test_an_unknown_name_fails_clearly_without_retrying(producer, worker, catalog, kind):
    job = producer.submit(kind, {"name": "no_such_thing"})
    row = wait_for_state(catalog, job)
    assert row["state"] == "failed"
    assert row["attempt"] == 1
    assert "no_such_thing" in row["error"]["message"]
    assert "exists" in row["error"]["message"]


def test_a_table_is_not_a_materialized_view(producer, worker, catalog):
    row = wait_for_state(catalog, producer.submit("pg.refresh_materialized_view", {"name": "test_orders"}))
    assert row["state"] == "failed"
    assert "no materialized view named 'test_orders'" in row["error"]["message"]


@pytest.mark.parametrize(
    "name", ["test_orders; DROP TABLE test_orders", 'test"orders', "a.b.c", "", "x' OR '1'='1"]
)
def test_names_that_are_not_identifiers_are_refused_at_submit(producer, catalog, name):
    with pytest.raises(InvalidPayload, match="name"):
        producer.submit("pg.vacuum_analyze", {"name": name})
