"""``jobs db``: the ledger's schema."""

from __future__ import annotations

import click

from jobs.cli import context
from jobs.cli.output import err

__all__ = ["db"]


@click.group()
def db() -> None:
    """Manage the ledger's schema (Alembic migrations)."""


@db.command()
@click.option("--create-database", is_flag=True, help="Create the database first if it does not exist.")
def upgrade(create_database: bool) -> None:
    """Migrate the ledger to the newest schema."""
    from jobs import migrate

    settings = context.settings()
    if create_database and migrate.create_database(settings):
        err.print("created the database")
    migrate.upgrade(settings)
    err.print(f"ledger schema at {migrate.current(settings)} (newest)")


@db.command()
@click.argument("revision", default="-1")
def downgrade(revision: str) -> None:
    """Take the schema back to REVISION (default: one step)."""
    from jobs import migrate

    migrate.downgrade(context.settings(), revision)
    err.print(f"ledger schema at {migrate.current(context.settings()) or 'base (empty)'}")


@db.command()
def current() -> None:
    """Print the schema revision of the database and the newest one."""
    from jobs import migrate

    click.echo(f"database: {migrate.current(context.settings()) or 'empty'}")
    click.echo(f"newest:   {migrate.head()}")


@db.command()
def check() -> None:
    """Fail if the code's tables and the migrations disagree (alembic check)."""
    from jobs import migrate

    migrate.check(context.settings())
    err.print("models and migrations agree")
