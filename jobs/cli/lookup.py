"""``jobs status``, ``list`` and ``wait`` (``cancel`` and ``retry`` are in ``jobs.cli.bulk``)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from jobs.cli import context, options
from jobs.cli.completion import kind_names, queue_names
from jobs.cli.output import emit_json, humanize, state
from jobs.states import STATES

__all__ = ["list_", "status", "wait"]


_HELD = " (waiting for its limits: `jobs explain ID` says which)"
_PARENTS = " (waiting for {} parent step(s) to finish: `jobs explain ID` says which)"


@click.command()
@click.argument("job_id")
@options.json_output()
def status(job_id: str, as_json: bool) -> None:
    """Show a job: state, attempts with their errors, timings, worker, result."""
    # Imported here, as in every command: completing a command line loads none of it.
    from rich.table import Table

    from jobs import lookup
    from jobs.cli.output import console

    job = lookup.get_job(context.settings(), context.registry(), lookup.parse_id(job_id))
    if as_json:
        emit_json(job)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("kind", job["kind"]),
        ("state", state(job["state"]) + _held(job)),
        ("queue", f"{job['queue']} (priority {job['priority']})"),
        ("attempts", f"{job['attempt']} of {job['max_attempts']}"),
        ("created", humanize(job["created_at"])),
        ("published", humanize(job["published_at"])),
        ("started", humanize(job["started_at"])),
        ("finished", humanize(job["finished_at"])),
    ]
    if job["not_before"] and job["state"] in ("scheduled", "retrying"):
        rows.append(("not before", humanize(job["not_before"])))
    if job["worker"]:
        rows.append(("worker", job["worker"]))
    if job["idempotency_key"]:
        rows.append(("key", job["idempotency_key"]))
    if job["retry_of"]:
        rows.append(("retry of", job["retry_of"]))
    rows += _workflow_rows(job.get("workflow"))
    if job["progress"]:
        rows.append(("progress", _progress(job["progress"])))
    rows.append(("payload", json.dumps(job["payload"])))
    if job["result"] is not None:
        rows.append(("result", json.dumps(job["result"])))
    if job["error"]:
        rows.append(("error", f"{job['error'].get('type')}: {job['error'].get('message')}"))
    for key, value in rows:
        grid.add_row(key, str(value))
    console.print(grid)
    if job["attempts"]:
        table = Table(title="attempts", title_justify="left")
        for column in ("#", "worker", "started", "finished", "outcome", "error"):
            table.add_column(column)
        for attempt in job["attempts"]:
            error = attempt["error"] or {}
            table.add_row(
                str(attempt["attempt"]),
                attempt["worker"] or "-",
                humanize(attempt["started_at"]),
                humanize(attempt["finished_at"]),
                attempt["outcome"] or "running",
                f"{error.get('type')}: {error.get('message')}" if error else "",
            )
        console.print(table)
    _traceback(job["error"])


def _held(job: dict[str, Any]) -> str:
    """What a held job waits for: its parents (a workflow's step), or its limits."""
    if job["state"] != "held":
        return ""
    flow = job.get("workflow")
    return _PARENTS.format(len(flow["waiting_for"])) if flow and job["pending"] else _HELD


def _workflow_rows(flow: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """A step's workflow, its name, the steps it comes after, the job that replaced it (a retry)."""
    if not flow:
        return []
    from rich.markup import escape

    text = str(flow["step"])
    parents = [parent["step"] for parent in flow["parents"]]
    if parents:
        shown = ", ".join(parents[:5]) + (f" and {len(parents) - 5} more" if len(parents) > 5 else "")
        text += f", after {shown}"
    if flow["replaced_by"]:
        text += f"; replaced by job {flow['replaced_by']} (a retry of the workflow)"
    return [("workflow", f"{escape(flow['name'])} ({flow['id']})"), ("step", text)]


def _traceback(error: dict[str, Any] | None) -> None:
    """The last error's traceback: the worker logs it only at DEBUG, the ledger keeps it."""
    from jobs.cli.output import console

    trace = (error or {}).get("traceback")
    if trace:
        console.print("traceback of the last error:", style="bold")
        console.print(trace.rstrip(), markup=False, highlight=False, style="dim", soft_wrap=True)


def _progress(report: dict[str, Any]) -> str:
    done, total, message = report.get("done"), report.get("total"), report.get("message")
    text = f"{done:g}/{total:g}" if total else f"{done}"
    return f"{text} {message}" if message else text


@click.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--kind", "kinds", multiple=True, help="Only jobs of this kind.", shell_complete=kind_names)
@click.option("--queue", "queues", multiple=True, help="Only jobs on this queue.", shell_complete=queue_names)
@click.option("--since", type=options.SINCE, help="Created at or after (ISO time, or a duration ago: 1h).")
@click.option("--until", type=options.SINCE, help="Created before (ISO time, or a duration ago).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@options.json_output()
def list_(
    states: tuple[str, ...],
    kinds: tuple[str, ...],
    queues: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    page: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    from rich.table import Table

    from jobs import lookup
    from jobs.cli.output import console, err

    filters = lookup.Filters(states, kinds, queues, since, until)
    rows, total = lookup.list_jobs(context.settings(), filters, limit=limit, offset=(page - 1) * limit)
    if as_json:
        emit_json({"total": total, "page": page, "limit": limit, "jobs": rows})
        return
    table = Table(box=None, pad_edge=False)
    for column in ("id", "kind", "state", "queue", "try", "created"):
        table.add_column(column, no_wrap=True)
    table.add_column("error", overflow="ellipsis", no_wrap=True, max_width=60)
    for row in rows:
        table.add_row(
            row["id"],
            row["kind"],
            state(row["state"]),
            row["queue"],
            f"{row['attempt']}/{row['max_attempts']}",
            humanize(row["created_at"]),
            (row["error"] or "")[:60],
        )
    console.print(table)
    pages = max(1, -(-total // limit))
    err.print(f"{len(rows)} of {total} job(s), page {page} of {pages}")


@click.command()
@click.argument("job_id")
@click.option("--timeout", type=options.DURATION, help="Give up after this long (exit 124).")
@options.json_output()
def wait(job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait for a job to finish: exit 0 if it succeeded, 1 if it failed or was cancelled."""
    from jobs import lookup
    from jobs.cli.waiting import wait_for

    sys.exit(wait_for(lookup.parse_id(job_id), timeout=timeout, as_json=as_json))
