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
from typing import TYPE_CHECKING, Any

import click

from jobs.cli.output import fail
from jobs.errors import JobsError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

__all__ = ["cli", "main"]


#: Every command: where it lives (imported only when it runs, so ``jobs status`` does not pay for
#: Alembic, Prometheus or Celery) and its one-line help, so that ``jobs --help`` and completing a
#: command name import none of them. A unit test keeps each line equal to its command's own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "submit": (
        "jobs.cli.submit:submit",
        "Submit a job of KIND; prints its id once it is safe in the ledger.",
    ),
    "status": (
        "jobs.cli.lookup:status",
        "Show a job: state, attempts with their errors, timings, worker, result.",
    ),
    "list": ("jobs.cli.lookup:list_", "List jobs, newest first."),
    "wait": (
        "jobs.cli.lookup:wait",
        "Wait for a job to finish: exit 0 if it succeeded, 1 if it failed or was cancelled.",
    ),
    "cancel": (
        "jobs.cli.bulk:cancel",
        "Cancel jobs by id, or every unfinished job the filters select (with --yes).",
    ),
    "retry": (
        "jobs.cli.bulk:retry",
        "Run failed or cancelled jobs again, each as a new job linked to the old one.",
    ),
    "explain": (
        "jobs.cli.explain:explain",
        "Why the job is not running (or what it is doing), one reason per line, each with what to do.",
    ),
    "workflow": (
        "jobs.cli.workflow:workflow",
        "Workflows: steps (jobs) that run after other steps, submitted from a JSON or YAML spec.",
    ),
    "kinds": ("jobs.cli.kinds:kinds", "List the job kinds this installation knows."),
    "schedule": (
        "jobs.cli.schedule:schedule",
        "Schedules: jobs the leader (jobs beat) fires on a cron expression or a fixed interval.",
    ),
    "limits": (
        "jobs.cli.limits:limits",
        "Limits on starting jobs: N at once or N per period, for a kind (per payload key) or a queue.",
    ),
    "queue": (
        "jobs.cli.queue:queue",
        "Pause and resume queues: workers stop taking a paused queue's jobs (running ones finish).",
    ),
    "queues": (
        "jobs.cli.queues:queues",
        "Per queue: jobs queued in the ledger and messages in Redis, running, consumers, oldest wait.",
    ),
    "workers": (
        "jobs.cli.workers:workers",
        "Workers in the roster (alive, or silent in the last hour) and any that answer: state, queues,"
        " pool type and size, running jobs, kinds, uptime.",
    ),
    "top": (
        "jobs.cli.top:top",
        "Live view: queues, running jobs, recent failures, leader and workers (q quits).",
    ),
    "doctor": (
        "jobs.cli.doctor:doctor",
        "Check PostgreSQL, migrations, Redis, the leader, workers and Flower; exit 0 only if none fails.",
    ),
    "metrics": (
        "jobs.cli.metrics:metrics",
        "Serve the ledger's metrics on http://ADDRESS:PORT/metrics until stopped (SIGTERM or Ctrl-C).",
    ),
    "health": (
        "jobs.cli.health:health",
        "Exit 0 if this host's ROLE (worker, beat or flower) is healthy, else 1; for container probes.",
    ),
    "db": ("jobs.cli.db:db", "Manage the ledger's schema (Alembic migrations)."),
    "worker": ("jobs.cli.processes:worker", "Run a worker (Celery) that executes jobs."),
    "beat": (
        "jobs.cli.processes:beat",
        "Run the leader: staging, relaying and rescuing jobs (one leads; start several safely).",
    ),
    "flower": (
        "jobs.cli.processes:flower",
        "Run Flower (live view of workers and jobs), with basic auth from JOBS_FLOWER_*.",
    ),
    "dev": (
        "jobs.cli.dev:dev",
        "Run the whole platform in the foreground: migrations, a worker, beat and Flower.",
    ),
}


class JobsGroup(click.Group):
    """A click group that turns platform errors and usage errors into one line and an exit code.

    Its commands are loaded lazily from ``COMMANDS``; listing them (``--help``,
    completing a command name) shows their one-line help without loading them.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, _, name = COMMANDS[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        self.commands[cmd_name] = command
        return command

    def summary(self, cmd_name: str) -> click.Command | None:
        """The command if it is loaded, else a stand-in that carries only its one-line help."""
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        return click.Command(cmd_name, help=COMMANDS[cmd_name][1])

    def _listed(self, ctx: click.Context, prefix: str = "") -> list[tuple[str, click.Command]]:
        found = [(name, self.summary(name)) for name in self.list_commands(ctx) if name.startswith(prefix)]
        return [(name, command) for name, command in found if command is not None and not command.hidden]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click.Group.format_commands, from the stand-ins.
        commands = self._listed(ctx)
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in commands])

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        # click.Group.shell_complete, from the stand-ins.
        from click.shell_completion import CompletionItem

        results = [
            CompletionItem(name, help=command.get_short_help_str())
            for name, command in self._listed(ctx, incomplete)
        ]
        results.extend(click.Command.shell_complete(self, ctx, incomplete))
        return results

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
