"""The ``jobs`` command: the group, global error handling, and the exit codes.

Exit codes: 0 ok · 1 the job failed (with ``--wait``) · 2 bad input ·
3 infrastructure unreachable · 124 ``--timeout`` expired while waiting.
Expected errors print one line and never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from jobs.cli.output import fail
from jobs.errors import JobsError

__all__ = ["cli", "main"]


class JobsGroup(click.Group):
    """A click group that turns platform errors and usage errors into one line and an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.format_message())
            sys.exit(0)
        except click.ClickException as error:
            fail(error.format_message(), error.exit_code)
        except click.Abort:
            fail("aborted", 130)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobsError as error:
            fail(error.message, error.exit_code)


@click.group(cls=JobsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the platform does (to stderr).")
def cli(verbose: bool) -> None:
    """Typed jobs on Celery, with PostgreSQL as the system of record.

    Configure with JOBS_* environment variables or a .env file (see README).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    from jobs.cli import bulk, db, health, inspect, kinds, processes, queue, schedule, submit

    cli.add_command(submit.submit)
    for command in (inspect.status, inspect.list_, inspect.wait, bulk.cancel, bulk.retry):
        cli.add_command(command)
    cli.add_command(kinds.kinds)
    cli.add_command(db.db)
    for command in (processes.worker, processes.beat, processes.flower, processes.dev):
        cli.add_command(command)
    cli.add_command(health.health)
    cli.add_command(schedule.schedule)
    cli.add_command(queue.queue)
    from jobs.cli import doctor, explain, metrics, queues, top, workers

    for command in (top.top, queues.queues, workers.workers, explain.explain, doctor.doctor, metrics.metrics):
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="jobs")
