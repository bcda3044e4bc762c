"""``jobs explain ID``: why this job is not running, and what to do."""

from __future__ import annotations

import click

from jobs.cli import context, options
from jobs.cli.output import emit_json, state

__all__ = ["explain"]


@click.command()
@click.argument("job_id")
@options.worker_timeout
@options.json_output()
def explain(job_id: str, timeout: float, as_json: bool) -> None:
    """Why the job is not running (or what it is doing), one reason per line, each with what to do."""
    # Imported here, not at the top: completing a command line loads none of them.
    from rich.markup import escape

    from jobs import explain as explaining
    from jobs import lookup
    from jobs.cli.output import console

    facts = explaining.gather(context.settings(), lookup.parse_id(job_id), timeout=timeout)
    found = explaining.reasons(facts)
    job = facts.job
    if as_json:
        emit_json(
            {
                "id": str(job["id"]),
                "kind": job["kind"],
                "queue": job["queue"],
                "state": job["state"],
                "reasons": [reason.as_dict() for reason in found],
                "limits": [wait.as_dict() for wait in facts.limits],
                "workers_asked": facts.live_workers is not None,
                "workflow": facts.step.as_dict() if facts.step is not None else None,
            }
        )
        return
    console.print(
        f"{job['id']} {escape(job['kind'])} on {escape(job['queue'])}: {state(job['state'])}", markup=True
    )
    if facts.step is not None:
        console.print(f"  {escape(facts.step.describe())}", markup=True)
    for reason in found:
        console.print(f"  [bold]•[/] {escape(reason.message)}", markup=True)
        console.print(f"    [dim]→ {escape(reason.action)}[/]", markup=True)
    if facts.live_workers is None and job["state"] in ("queued", "running"):
        console.print("  [yellow]![/] the workers could not be asked (Redis unreachable)", markup=True)
