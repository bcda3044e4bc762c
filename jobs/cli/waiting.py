"""Waiting for a job to finish, with a live progress bar fed by the job's ``progress()`` reports."""

from __future__ import annotations

import json
import time
import uuid

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from jobs import lookup
from jobs.cli import context
from jobs.cli.output import emit_json, err

__all__ = ["EXIT_TIMEOUT", "wait_for"]

EXIT_TIMEOUT = 124
POLL = 0.25


def wait_for(job_id: uuid.UUID, *, timeout: float | None, as_json: bool) -> int:
    """Block until the job is terminal; returns the exit code (0 succeeded, 1 failed/cancelled)."""
    settings = context.settings()
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"job {job_id}", total=None, note="")
        while True:
            row = lookup.states_of(settings, [job_id]).get(job_id)
            if row is None:
                err.print(f"[red]error:[/] no job with id {job_id}")
                return 2
            state = row["state"]
            report = row["progress"] or {}
            total = report.get("total")
            note = f"{state} attempt {row['attempt']}/{row['max_attempts']}"
            if report.get("message"):
                note += f" · {report['message']}"
            bar.update(task, total=total, completed=report.get("done") or 0, note=note)
            if state in ("succeeded", "failed", "cancelled"):
                break
            if deadline is not None and time.monotonic() > deadline:
                err.print(f"job {job_id} is still {state} after {timeout:g}s; stopped waiting")
                return EXIT_TIMEOUT
            time.sleep(POLL)
    if as_json:
        emit_json({"id": job_id, "state": state, "result": row["result"], "error": row["error"]})
    elif state == "succeeded":
        err.print(f"job {job_id} [green]succeeded[/]: {json.dumps(row['result'])}")
    else:
        error = row["error"] or {}
        err.print(f"job {job_id} [red]{state}[/]: {error.get('message', '')}".rstrip(": "))
    return 0 if state == "succeeded" else 1
