"""``jobs workers``: each live worker with its queues, pool, running jobs and uptime."""

from __future__ import annotations

import time

import click

from jobs.cli import context, options
from jobs.cli.output import emit_json

__all__ = ["workers"]


@click.command()
@options.worker_timeout
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def workers(timeout: float, as_json: bool) -> None:
    """Workers that answer within the timeout: queues, pool type and size, running jobs, uptime."""
    # Imported here, not at the top: completing a command line loads none of them.
    from rich.markup import escape
    from rich.table import Table

    from jobs import fleet, observe
    from jobs.cli.output import console, err

    found = fleet.workers(context.settings(), timeout=timeout)
    if as_json:
        emit_json({"workers": [worker.as_dict() for worker in found]})
        return
    if not found:
        err.print(f"no worker answered within {timeout:g}s", markup=False)
        return
    now = time.time()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("worker", "queues", "pool", "busy", "uptime"):
        table.add_column(column, justify="right" if column in ("busy", "uptime") else "left")
    for worker in found:
        size = "?" if worker.concurrency is None else str(worker.concurrency)
        table.add_row(
            escape(worker.name),
            escape(", ".join(worker.queues)),
            f"{worker.pool} x{size}",
            f"{len(worker.active)}/{size}",
            "-" if worker.uptime is None else observe.span(worker.uptime),
        )
    console.print(table)
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
