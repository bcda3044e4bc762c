"""Alembic environment: the ledger metadata is the target; the URL comes from the settings."""

from __future__ import annotations

from alembic import context

from jobs import db
from jobs.schema import metadata
from jobs.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = db.engine(get_settings()) if url == get_settings().database_url else None
    connectable = engine or db.sa.create_engine(url)
    with db.ledger_errors(url), connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
