"""``jobs queues``: each queue's depth in the ledger and in Redis, its consumers and its oldest job."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from jobs.cli import context, options
from jobs.cli.output import emit_json
from jobs.cli.processes import worker_queues

# Imported in the functions, not here: completing a command line loads none of them.
if TYPE_CHECKING:
    from rich.table import Table

    from jobs import snapshot

__all__ = ["queues", "queues_table"]


def queues_table(views: list[snapshot.QueueView]) -> Table:
    """Queues as rows; a ledger/Redis mismatch is marked ``≠`` in red."""
    from rich.markup import escape
    from rich.table import Table

    from jobs import observe

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("queue", overflow="fold")
    table.add_column("queued", justify="right")
    table.add_column("held", justify="right")
    table.add_column("redis", justify="right")
    table.add_column("running", justify="right")
    table.add_column("reserved", justify="right")
    table.add_column("later", justify="right")
    table.add_column("consumers", justify="right")
    table.add_column("oldest", justify="right")
    table.add_column("paused")
    for view in views:
        stats = view.ledger
        states = stats.states if stats else {}
        redis = "?" if view.redis is None else str(view.redis.ready)
        if view.mismatch:
            redis = f"[bold red]≠{redis}[/]"
        later = states.get("scheduled", 0) + states.get("retrying", 0)
        consumers = "?" if view.consumers is None else str(len(view.consumers))
        if view.unconsumed:
            consumers = "[bold red]0[/]"
        oldest = stats.oldest_waiting if stats else None
        table.add_row(
            escape(view.name),
            str(view.queued),
            str(states.get("held", 0)),
            redis,
            str(states.get("running", 0)),
            "?" if view.redis is None else str(view.redis.reserved),
            str(later),
            consumers,
            "-" if oldest is None else observe.span(oldest),
            "[yellow]paused[/]" if view.paused else "",
        )
    return table


@click.command()
@options.worker_timeout
@options.json_output()
def queues(timeout: float, as_json: bool) -> None:
    """Per queue: jobs queued in the ledger and messages in Redis, running, consumers, oldest wait."""
    from rich.markup import escape

    from jobs import snapshot
    from jobs.cli.output import console, err

    settings = context.settings()
    taken = snapshot.take(settings, worker_queues(settings), timeout=timeout)
    if as_json:
        emit_json(
            {
                "queues": [view.as_dict() for view in taken.queues],
                "redis_error": taken.redis_error,
                "workers_error": taken.workers_error,
            }
        )
        return
    console.print(queues_table(taken.queues))
    if any(view.mismatch for view in taken.queues):
        console.print(
            "[red]≠[/] Redis holds a different number of messages than the ledger has queued jobs "
            "(a moment after a submit, or a lost or duplicate message: the leader republishes "
            "jobs no worker took, and a worker's claim absorbs duplicates)",
            markup=True,
        )
    unconsumed = [view.name for view in taken.queues if view.unconsumed]
    if unconsumed:
        console.print(
            f"[red]0[/] no live worker consumes {', '.join(escape(name) for name in unconsumed)}: its jobs or"
            " messages wait until one does (`jobs worker -Q NAME`)",
            markup=True,
        )
    for problem in (taken.redis_error, taken.workers_error):
        if problem:
            err.print(f"[yellow]warning:[/] {escape(problem)}", markup=True)
