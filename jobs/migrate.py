"""Schema migrations (Alembic), driven from code so they work from any directory or image."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from jobs import db
from jobs.settings import Settings, get_settings

__all__ = ["alembic_config", "check", "current", "downgrade", "head", "upgrade"]

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
