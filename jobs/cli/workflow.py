"""``jobs workflow``: submit a workflow from a spec file, see it as a graph, list, cancel and retry.

A workflow is steps (jobs) that run after other steps (docs/workflows.md). A spec that does
not pass its checks (a cycle, an unknown kind, a step after a missing step, an invalid payload)
is refused in one line naming the step, with exit 2, and nothing is created. How the graph is
drawn, and how big workflows are summarised, is ``jobs.cli.workflow_tables``. See
docs/operations.md, "Operating workflows".
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime

import click

from jobs.cli import context
from jobs.cli.completion import workflow_ids, workflow_names
from jobs.cli.options import SINCE, json_output
from jobs.cli.output import emit_json
from jobs.errors import InvalidTransition, InvalidWorkflow, WorkflowNotFound

# The ledger, Celery and rich are imported in the functions that use them: completing a
# command line (``jobs workflow status <TAB>``) loads none of them.

__all__ = ["STATES", "parse_workflow_id", "workflow"]

#: A workflow's states, as ``jobs.workflow_views.STATES`` (a unit test keeps them equal).
STATES = ("running", "succeeded", "failed", "cancelled")

json_option = json_output()
id_argument = click.argument("workflow_id", metavar="ID", shell_complete=workflow_ids)


def parse_workflow_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise WorkflowNotFound(
            f"{text!r} is not a workflow id (a UUID like 0b7c…); `jobs workflow list` shows them"
        ) from None


@click.group()
def workflow() -> None:
    """Workflows: steps (jobs) that run after other steps, submitted from a JSON or YAML spec.

    \b
    Examples:
      jobs workflow submit nightly.yaml
      jobs workflow status 0b7c3f4e-…
      jobs workflow list --state failed --since 1d
      jobs workflow cancel 0b7c3f4e-…
      jobs workflow retry 0b7c3f4e-…
    """


@workflow.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@json_option
def submit(file: str, as_json: bool) -> None:
    """Submit a workflow from a JSON or YAML spec FILE ('-' reads stdin); prints its id.

    The spec has a name and steps, each with a name, a kind, a payload and the steps it
    comes after. Every step is checked before anything is written: a bad spec is refused in
    one line naming the step (exit 2) and nothing is created.
    """
    from jobs.cli.output import err
    from jobs.workflows import load, submit_workflow

    if file == "-":
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError:
            raise InvalidWorkflow("stdin is not UTF-8 text") from None
        flow = load("<stdin>", text)
    else:
        flow = load(file)
    submitted = submit_workflow(flow, producer=context.producer(), submitted_by=context.who())
    if as_json:
        emit_json({"id": submitted, "name": flow.name, "steps": submitted.steps})
        return
    click.echo(str(submitted))
    err.print(
        f"workflow {flow.name!r} submitted: {len(submitted.steps)} steps "
        f"(`jobs workflow status {submitted}` draws it)",
        markup=False,
    )
    if not submitted.published:
        err.print(
            "[yellow]warning:[/] the broker (Redis) is unreachable; the workflow is saved in the "
            "ledger and its first steps will be published when Redis returns"
        )


@workflow.command()
@id_argument
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Draw every step (by default runs of more than 10 sibling steps are one row each, "
    "and past 100 rows succeeded rows fold).",
)
@json_option
def status(workflow_id: str, everything: bool, as_json: bool) -> None:
    """Show a workflow: its state, and its steps as a graph with their states and timings.

    Every parent is drawn above its children, indented by depth; `after` names the steps a
    step comes after, and what a held step still waits for. --json lists every step.
    """
    from jobs import workflow_views
    from jobs.cli import workflow_tables

    view = workflow_views.status(context.settings(), parse_workflow_id(workflow_id))
    if as_json:
        emit_json(view.as_dict())
        return
    workflow_tables.graph(view, everything=everything, now=_now())


def _now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)


@workflow.command("list")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(STATES), help="Only workflows in this state."
)
@click.option(
    "--name", "names", multiple=True, help="Only workflows of this name.", shell_complete=workflow_names
)
@click.option("--since", type=SINCE, help="Created at or after (ISO time, or a duration ago: 1h).")
@click.option("--until", type=SINCE, help="Created before (ISO time, or a duration ago).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
def list_(
    states: tuple[str, ...],
    names: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List workflows, newest first, with their steps' states counted.

    A workflow is running while a step has not finished; then failed if a step failed,
    cancelled if a step was cancelled, else succeeded.
    """
    from jobs import workflow_views
    from jobs.cli import workflow_tables
    from jobs.cli.output import err

    found = workflow_views.list_workflows(
        context.settings(), states=states, names=names, since=since, until=until, limit=limit
    )
    if as_json:
        emit_json({"limit": limit, "workflows": [summary.as_dict() for summary in found]})
        return
    workflow_tables.workflows(found, now=_now())
    more = " (the newest; --limit shows more)" if len(found) == limit else ""
    err.print(f"{len(found)} workflow(s){more}", markup=False)


@workflow.command()
@id_argument
@json_option
def cancel(workflow_id: str, as_json: bool) -> None:
    """Cancel every unfinished step of a workflow at once; running steps are stopped.

    The steps are cancelled in one statement: no step of the workflow starts after it. A
    workflow that has finished has nothing to cancel (exit 2).
    """
    from jobs import workflow_control
    from jobs.app import get_app  # Celery is needed only to tell workers to stop running steps

    wid = parse_workflow_id(workflow_id)
    cancelled = workflow_control.cancel(context.settings(), get_app(), wid)
    if not cancelled:
        raise InvalidTransition(f"workflow {wid} has no unfinished step: it has finished, nothing to cancel")
    running = sum(1 for step in cancelled if step.state == "running")
    if as_json:
        emit_json(
            {
                "id": wid,
                "cancelled": len(cancelled),
                "stopped": running,
                "steps": [{"id": step.id, "was": step.state} for step in cancelled],
            }
        )
        return
    stopped = f", {running} of them running (their workers are told to stop them)" if running else ""
    click.echo(f"workflow {wid}: cancelled {len(cancelled)} step(s){stopped}")


@workflow.command()
@id_argument
@json_option
def retry(workflow_id: str, as_json: bool) -> None:
    """Run a finished workflow's failed and cancelled steps again, and every step after them.

    Steps that succeeded keep their results (the steps run again read them); each step run
    again is a new job, linked to the one it replaces. A running workflow is refused (exit 2):
    wait for it, or cancel it first.
    """
    from jobs import workflow_control, workflow_views

    wid = parse_workflow_id(workflow_id)
    retried = workflow_control.retry(context.settings(), wid, submitted_by=context.who())
    # In the graph's order (parents first); the steps not run again keep their results.
    order = [step.name for step in workflow_views.status(context.settings(), wid).steps]
    again = [name for name in order if name in retried.steps]
    kept = [name for name in order if name not in retried.steps]
    if as_json:
        emit_json({"id": wid, "steps": {name: retried.steps[name] for name in again}, "kept": kept})
        return
    click.echo(f"workflow {wid}: running {len(again)} step(s) again: {_names(again)}")
    if kept:
        click.echo(f"kept the results of {len(kept)} step(s): {_names(kept)}")


def _names(names: list[str], shown: int = 100) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
