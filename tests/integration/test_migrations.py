"""Migrations: upgrade, check, downgrade, upgrade again, on a database of their own."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jobs import db, migrate
from tests.support.isolation import scratch_database_url

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch(settings):
    url = sa.make_url(scratch_database_url(settings.database_url, "migrations"))
    scratch_settings = settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)})
    admin = sa.create_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    with admin.connect() as conn:  # a new, empty database every time
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    admin.dispose()
    migrate.create_database(scratch_settings)
    yield scratch_settings
    db.dispose()


def tables(settings) -> set[str]:
    with db.transaction(settings) as conn:
        return set(sa.inspect(conn).get_table_names())


def test_round_trip_and_check(scratch):
    assert tables(scratch) <= {"alembic_version"}
    migrate.upgrade(scratch)
    assert {"jobs", "job_attempts"} <= tables(scratch)
    assert migrate.current(scratch) == migrate.head()
    migrate.check(scratch)  # alembic check: models and migrations agree
    migrate.downgrade(scratch, "base")
    assert tables(scratch) <= {"alembic_version"}
    assert migrate.current(scratch) is None
    migrate.upgrade(scratch)
    migrate.check(scratch)
    assert migrate.current(scratch) == migrate.head()
