"""How the ledger's connection errors read, against a real PostgreSQL server."""

from __future__ import annotations

import uuid

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


def test_an_unreachable_server_is_still_called_unreachable(settings: Settings) -> None:
    url = sa.make_url(settings.database_url).set(port=1).render_as_string(hide_password=False)
    nowhere = settings.model_copy(update={"database_url": url})
    with pytest.raises(LedgerUnavailable, match="PostgreSQL is unreachable at"), db.transaction(nowhere):
        pass
