"""The ``jobs`` command: the group, global error handling, and the exit codes.

Exit codes: 0 ok · 1 the job failed (with ``--wait``) · 2 bad input ·
3 infrastructure unreachable · 124 ``--timeout`` expired while waiting.
Expected errors print one line and never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from jobs.cli.output import fail
from jobs.errors import JobsError

__all__ = ["cli", "main"]


#: Every command, imported only when it runs (or for ``--help``): a command loads what it needs,
#: and ``jobs status`` does not pay for Alembic, Prometheus or Celery's inspect machinery.
COMMANDS = {
    "submit": "jobs.cli.submit:submit",
    "status": "jobs.cli.inspect:status",
    "list": "jobs.cli.inspect:list_",
    "wait": "jobs.cli.inspect:wait",
    "cancel": "jobs.cli.bulk:cancel",
    "retry": "jobs.cli.bulk:retry",
    "explain": "jobs.cli.explain:explain",
    "kinds": "jobs.cli.kinds:kinds",
    "schedule": "jobs.cli.schedule:schedule",
    "queue": "jobs.cli.queue:queue",
    "queues": "jobs.cli.queues:queues",
    "workers": "jobs.cli.workers:workers",
    "top": "jobs.cli.top:top",
    "doctor": "jobs.cli.doctor:doctor",
    "metrics": "jobs.cli.metrics:metrics",
    "health": "jobs.cli.health:health",
    "db": "jobs.cli.db:db",
    "worker": "jobs.cli.processes:worker",
    "beat": "jobs.cli.processes:beat",
    "flower": "jobs.cli.processes:flower",
    "dev": "jobs.cli.dev:dev",
}


class JobsGroup(click.Group):
    """A click group that turns platform errors and usage errors into one line and an exit code.

    Its commands are loaded lazily from ``COMMANDS``.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, _, name = COMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        self.commands[cmd_name] = command
        return command

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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="jobs")
