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


def test_downgrading_below_workflows_keeps_the_schedules_that_fire_a_kind(scratch):
    """0008 lets a schedule fire a workflow instead of a kind's job; going back to 0007 deletes those
    (no kind to fire), keeps the others, and ``kind`` is required again."""
    migrate.upgrade(scratch)
    with db.transaction(scratch) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO schedules (name, kind, payload, every_seconds) VALUES ('hb', 'ping', '{}', 60);"
                "INSERT INTO schedules (name, payload, workflow, every_seconds)"
                " VALUES ('etl', '{}', '{\"name\": \"etl\", \"steps\": []}', 60)"
            )
        )
        with pytest.raises(sa.exc.IntegrityError, match="ck_schedules_target"), conn.begin_nested():
            conn.execute(
                sa.text("INSERT INTO schedules (name, payload, every_seconds) VALUES ('x', '{}', 60)")
            )
    migrate.downgrade(scratch, "0007")
    with db.transaction(scratch) as conn:
        assert conn.execute(sa.text("SELECT name, kind FROM schedules")).all() == [("hb", "ping")]
        columns = {column["name"]: column for column in sa.inspect(conn).get_columns("schedules")}
    assert "workflow" not in columns
    assert columns["kind"]["nullable"] is False
    migrate.upgrade(scratch)
    migrate.check(scratch)
