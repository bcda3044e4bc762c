"""Schema migrations (Alembic), driven from code so they work from any directory or image."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from jobs import db
from jobs.settings import Settings, get_settings

__all__ = ["alembic_config", "check", "create_database", "current", "downgrade", "head", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    """An Alembic config pointing at the project's migrations and the configured ledger."""
    settings = settings or get_settings()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings | None = None, revision: str = "head") -> None:
    """Bring the ledger's schema up to ``revision``."""
    settings = settings or get_settings()
    with db.ledger_errors(settings.database_url):
        command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings | None = None, revision: str = "base") -> None:
    """Take the ledger's schema down to ``revision``."""
    settings = settings or get_settings()
    with db.ledger_errors(settings.database_url):
        command.downgrade(alembic_config(settings), revision)


def check(settings: Settings | None = None) -> None:
    """Fail if the models and the migrations disagree (``alembic check``)."""
    settings = settings or get_settings()
    with db.ledger_errors(settings.database_url):
        command.check(alembic_config(settings))


def head() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(settings: Settings | None = None) -> str | None:
    """The revision the database is at (``None`` before the first migration)."""
    settings = settings or get_settings()
    with db.transaction(settings) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def create_database(settings: Settings | None = None) -> bool:
    """Create the configured database if it is missing (development and tests); ``True`` if created."""
    settings = settings or get_settings()
    url = sa.make_url(settings.database_url)
    name = url.database
    if not name:
        return False
    admin = sa.create_engine(
        url.set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": db.CONNECT_TIMEOUT},
    )
    try:
        with db.ledger_errors(settings.database_url), admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote_identifier(name)
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()
