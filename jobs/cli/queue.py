"""``jobs queue pause`` and ``jobs queue resume``: stop and restart the workers taking a queue's jobs.

The pause is a row in the ledger (``jobs.pauses``), so it survives worker
restarts; workers read it at start and every ``JOBS_PAUSE_POLL`` seconds, and
this command also tells the running workers at once (best effort: a broadcast
over Redis). Jobs keep arriving in a paused queue and wait there, queued.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import click

from jobs.cli import context, options
from jobs.cli.completion import queue_names
from jobs.cli.output import emit_json, humanize
from jobs.cli.processes import worker_queues
from jobs.errors import BadInput

# The ledger and rich are imported in the functions that use them: completing a command line
# (``jobs queue pause <TAB>``) loads neither.
if TYPE_CHECKING:
    from jobs import pauses

__all__ = ["queue"]

log = logging.getLogger("jobs.cli.queue")

REFRESH_COMMAND = "jobs_refresh_pauses"  # handled by workers.pauses


def _checked(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200 or any(ch.isspace() for ch in name):
        raise BadInput(f"{name!r} is not a queue name")
    return name


def _tell_workers() -> int | None:
    """Ask running workers to read the pauses now; how many answered (None: Redis unreachable)."""
    from jobs.app import get_app

    try:
        replies = get_app().control.broadcast(REFRESH_COMMAND, reply=True, timeout=1.0)
    except Exception as error:  # the ledger holds the pause; workers read it within JOBS_PAUSE_POLL
        log.warning("could not tell the workers: %s", error)
        return None
    return len(replies or [])


def _told(count: int | None) -> str:
    poll = f"{context.settings().pause_poll:g}"
    if count is None:
        return f"workers could not be told (Redis unreachable); they read it within {poll} s"
    return f"{count} worker(s) told; any other reads it within {poll} s"


def _pause_json(pause: pauses.Pause | None) -> dict[str, Any]:
    if pause is None:
        return {"paused": False}
    return {
        "paused": True,
        "paused_at": pause.paused_at,
        "paused_by": pause.paused_by,
        "reason": pause.reason,
    }


def _current(name: str) -> pauses.Pause | None:
    from jobs import db, pauses

    with db.transaction(context.settings()) as conn:
        return pauses.paused(conn).get(name)


@click.group()
def queue() -> None:
    """Pause and resume queues: workers stop taking a paused queue's jobs (running ones finish)."""


@queue.command()
@click.argument("name", shell_complete=queue_names)
@click.option("--reason", help="Why, for whoever looks later.")
@options.json_output()
def pause(name: str, reason: str | None, as_json: bool) -> None:
    """Pause queue NAME: its jobs wait, queued, until it is resumed; the pause survives restarts."""
    from jobs import pauses
    from jobs.cli.output import err

    name = _checked(name)
    settings = context.settings()
    changed = pauses.pause(settings, name, by=context.who(), reason=reason)
    told = _tell_workers() if changed else 0
    current = _current(name)
    if as_json:
        emit_json({"queue": name, "changed": changed, "workers_told": told, **_pause_json(current)})
        return
    if not changed and current is not None:
        since = f"since {humanize(current.paused_at)} by {current.paused_by or '?'}"
        click.echo(
            f"queue {name} was already paused ({since}{f': {current.reason}' if current.reason else ''})"
        )
        return
    click.echo(f"queue {name} paused")
    err.print(_told(told))
    if name not in worker_queues(settings):
        err.print(f"note: no kind runs on queue {name} by default; is the name right?")


@queue.command()
@click.argument("name", shell_complete=queue_names)
@options.json_output()
def resume(name: str, as_json: bool) -> None:
    """Resume queue NAME: workers take its jobs again."""
    from jobs import pauses
    from jobs.cli.output import err

    name = _checked(name)
    changed = pauses.resume(context.settings(), name)
    told = _tell_workers() if changed else 0
    if as_json:
        emit_json({"queue": name, "changed": changed, "workers_told": told, "paused": False})
        return
    if not changed:
        click.echo(f"queue {name} was not paused")
        return
    click.echo(f"queue {name} resumed")
    err.print(_told(told))
