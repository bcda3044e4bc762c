"""``jobs db``: the ledger's schema."""

from __future__ import annotations

import click

from jobs.cli import context, options, output
from jobs.cli.output import emit_json

__all__ = ["db"]


@click.group()
def db() -> None:
    """Manage the ledger's schema (Alembic migrations)."""


@db.command()
@click.option("--create-database", is_flag=True, help="Create the database first if it does not exist.")
@options.json_output()
def upgrade(create_database: bool, as_json: bool) -> None:
    """Migrate the ledger to the newest schema."""
    from jobs import migrate

    settings = context.settings()
    created = bool(create_database and migrate.create_database(settings))
    if created and not as_json:
        output.err.print("created the database")
    migrate.upgrade(settings)
    if as_json:
        emit_json({"created_database": created, "revision": migrate.current(settings), "newest": True})
        return
    output.err.print(f"ledger schema at {migrate.current(settings)} (newest)")


@db.command()
@click.argument("revision", default="-1")
@options.json_output()
def downgrade(revision: str, as_json: bool) -> None:
    """Take the schema back to REVISION (default: one step)."""
    from jobs import migrate

    migrate.downgrade(context.settings(), revision)
    if as_json:
        emit_json({"revision": migrate.current(context.settings())})
        return
    output.err.print(f"ledger schema at {migrate.current(context.settings()) or 'base (empty)'}")


@db.command()
@options.json_output()
def current(as_json: bool) -> None:
    """Print the schema revision of the database and the newest one."""
    from jobs import migrate

    if as_json:
        database, newest = migrate.current(context.settings()), migrate.head()
        emit_json({"database": database, "newest": newest, "up_to_date": database == newest})
        return
    click.echo(f"database: {migrate.current(context.settings()) or 'empty'}")
    click.echo(f"newest:   {migrate.head()}")


@db.command()
@options.json_output()
def check(as_json: bool) -> None:
    """Fail if the code's tables and the migrations disagree (alembic check)."""
    from jobs import migrate

    migrate.check(context.settings())
    if as_json:
        emit_json({"agree": True})
        return
    output.err.print("models and migrations agree")
