"""``jobs workers``: every worker in the roster, with its state, queues, pool, kinds and running jobs."""

from __future__ import annotations

import time

import click

from jobs.cli import context, options
from jobs.cli.output import emit_json

__all__ = ["workers"]

STATES = {
    "alive": "[green]alive[/]",
    "silent": "[bold red]silent[/]",
    "stopped": "[dim]stopped[/]",
    "unlisted": "[yellow]unlisted[/]",
}


@click.command()
@options.worker_timeout
@click.option("--all", "show_all", is_flag=True, help="Also list workers that stopped in the last hour.")
@options.json_output()
def workers(timeout: float, show_all: bool, as_json: bool) -> None:
    """Workers in the roster (alive, or silent in the last hour) and any that answer: state, queues,
    pool type and size, running jobs, kinds, uptime."""
    # Imported here, not at the top: completing a command line loads none of them.
    from rich.markup import escape
    from rich.table import Table

    from jobs import fleet, observe
    from jobs.cli.output import console, err

    found = fleet.workers(context.settings(), timeout=timeout, stopped=show_all)
    if as_json:
        emit_json({"workers": [worker.as_dict() for worker in found]})
        return
    if not found:
        err.print(f"no worker in the roster, and none answered within {timeout:g}s", markup=False)
        return
    now = time.time()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("worker", "state", "queues", "pool", "busy", "kinds", "uptime"):
        table.add_column(column, justify="right" if column in ("busy", "kinds", "uptime") else "left")
    for worker in found:
        size = "?" if worker.concurrency is None else str(worker.concurrency)
        table.add_row(
            escape(worker.name),
            STATES.get(worker.state, worker.state),
            escape(", ".join(worker.queues)),
            f"{worker.pool} x{size}",
            f"{len(worker.active)}/{size}" if worker.live else "-",
            str(len(worker.kinds)) if worker.state != "unlisted" else "?",
            "-" if worker.uptime is None else observe.span(worker.uptime),
        )
    console.print(table)
    if any(worker.state == "silent" for worker in found):
        err.print(
            "silent: no heartbeat for three JOBS_WORKER_HEARTBEAT periods (killed, hung, or cut off from"
            " PostgreSQL); its running jobs come back when their leases expire",
            markup=False,
        )
    running = [(worker, job) for worker in found for job in worker.active]
    if running:
        jobs_table = Table(
            box=None, header_style="bold", pad_edge=False, title="running", title_justify="left"
        )
        for column in ("job", "kind", "worker", "for"):
            jobs_table.add_column(column, justify="right" if column == "for" else "left")
        for worker, job in running:
            jobs_table.add_row(
                job.id,
                escape(job.kind),
                escape(worker.name),
                "-" if job.started is None else observe.span(now - job.started),
            )
        console.print(jobs_table)
