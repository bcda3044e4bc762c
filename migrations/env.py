"""Alembic environment: the ledger metadata is the target; the URL comes from the settings."""

from __future__ import annotations

import sqlalchemy as sa
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
    engine = sa.create_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": db.CONNECT_TIMEOUT}
    )
    try:
        with db.ledger_errors(url), engine.connect() as connection:
            context.configure(connection=connection, target_metadata=metadata, compare_type=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
