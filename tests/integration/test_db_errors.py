"""How the ledger's connection errors read, against a real PostgreSQL server."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy as sa

from jobs import db
from jobs.errors import LedgerUnavailable
from jobs.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def missing(settings: Settings) -> Settings:
    """The test server, naming a database that does not exist on it."""
    name = f"jobs_missing_{uuid.uuid4().hex[:8]}_test"
    url = sa.make_url(settings.database_url).set(database=name)
    return settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)})


def test_a_missing_database_is_named_with_how_to_create_it(missing: Settings) -> None:
    name = sa.make_url(missing.database_url).database
    expected = (
        f"the database '{name}' does not exist on the PostgreSQL server at .*; "
        "create it with: jobs db upgrade --create-database"
    )
    with pytest.raises(LedgerUnavailable, match=expected), db.transaction(missing):
        pass  # the pooled path (SQLAlchemy)
    with pytest.raises(LedgerUnavailable, match=expected), db.direct(missing):
        pass  # the workers' direct psycopg path
    with pytest.raises(LedgerUnavailable, match=expected), db.pooled(missing):
        pass  # the single submit's pooled psycopg path


def test_an_unreachable_server_is_still_called_unreachable(settings: Settings) -> None:
    url = sa.make_url(settings.database_url).set(port=1).render_as_string(hide_password=False)
    nowhere = settings.model_copy(update={"database_url": url})
    with pytest.raises(LedgerUnavailable, match="PostgreSQL is unreachable at"), db.transaction(nowhere):
        pass
    with pytest.raises(LedgerUnavailable, match="PostgreSQL is unreachable at"), db.pooled(nowhere):
        pass


def test_a_pooled_connection_goes_back_out_of_autocommit_and_a_dead_one_is_replaced(
    settings: Settings,
) -> None:
    """``db.pooled`` lends a pool connection in autocommit and returns it as the pool's other
    users expect it (a transaction rolls back); one PostgreSQL ended is invalidated, said once
    as ``LedgerUnavailable``, and the next use gets a live connection."""
    db.dispose()
    with db.pooled(settings) as raw:
        assert raw.autocommit
        pid = raw.info.backend_pid
    with db.direct(settings) as other:  # a connection of its own, outside the pool
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(LedgerUnavailable, match="PostgreSQL is unreachable at"), db.pooled(settings) as raw:
        raw.execute("SELECT 1")
    with db.pooled(settings) as raw:
        assert raw.execute("SELECT 1").fetchone() == (1,)
        reused = raw.info.backend_pid
    with db.engine(settings).connect() as conn:  # SQLAlchemy gets it back in a transaction
        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        assert (driver.info.backend_pid, driver.autocommit) == (reused, False)
        conn.execute(sa.text("CREATE TEMPORARY TABLE pooled_check (n int)"))
        conn.rollback()
        assert conn.execute(sa.text("SELECT to_regclass('pg_temp.pooled_check')")).scalar() is None
