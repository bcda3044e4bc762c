"""``jobs schedule``: add, list, show, edit, pause, resume, trigger and remove schedules.

The leader (``jobs beat``) reads the schedules every tick, so a change here
applies within one tick, without a restart. A schedule fires a job of a kind,
or a workflow read from a spec file (``--workflow FILE``). See ``docs/scheduling.md``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

import click

from jobs.cli import context, schedule_tables
from jobs.cli.completion import kind_names, queue_names, schedule_names
from jobs.cli.options import json_output, parse_param, payload_params
from jobs.cli.output import emit_json
from jobs.errors import InvalidSchedule

# jobs.schedules (Celery, SQLAlchemy) and rich are imported in the functions that use them:
# completing a command line (``jobs schedule show <TAB>``) loads none of them.
if TYPE_CHECKING:
    from jobs.schedules import ScheduleView
    from jobs.workflows import Workflow

__all__ = ["schedule"]

#: As jobs.schedules.MISFIRE_POLICIES and OVERLAP_POLICIES (a unit test keeps them equal).
MISFIRE_POLICIES = ("skip", "once", "all")
OVERLAP_POLICIES = ("allow", "skip")

json_option = json_output()
name_argument = click.argument("name", shell_complete=schedule_names)


def _timing_options(command: Any) -> Any:
    for option in reversed(
        (
            click.option(
                "--cron",
                metavar="EXPR",
                help="Cron expression (5 fields, or @hourly, @daily…), read as standard cron: "
                "with both day fields restricted, a day matching either fires ('0 9 1 * mon': "
                "every 1st and every Monday).",
            ),
            click.option("--every", metavar="DURATION", help="Fixed interval instead: 30s, 5m, 1h…"),
            click.option("--tz", "timezone", metavar="ZONE", help="IANA time zone of --cron (default UTC)."),
            payload_params,
            click.option("--payload", "payload_json", metavar="JSON", help="The payload as a JSON object."),
            click.option(
                "--workflow",
                "workflow_file",
                metavar="FILE",
                help="Fire the workflow of this spec file (JSON or YAML, as jobs.workflows.load reads) "
                "instead of a kind's job; its steps carry their own payloads, queues and priorities.",
            ),
            click.option(
                "--misfire",
                type=click.Choice(MISFIRE_POLICIES),
                help="Slots missed while no beat ran: skip them, fire the latest once, or fire them all.",
            ),
            click.option(
                "--overlap",
                type=click.Choice(OVERLAP_POLICIES),
                help="skip: do not fire while the previous firing is still queued or running.",
            ),
            click.option(
                "--queue", help="Queue to run on (default: the kind's).", shell_complete=queue_names
            ),
            click.option(
                "--priority", type=click.IntRange(0, 9), help="0 first … 9 last (default: the kind's)."
            ),
            json_option,
        )
    ):
        command = option(command)
    return command


def _payload(payload_json: str | None, params: tuple[str, ...]) -> dict[str, Any] | None:
    data: dict[str, Any] | None = None
    if payload_json is not None:
        try:
            loaded = json.loads(payload_json)
        except json.JSONDecodeError as error:
            raise InvalidSchedule(f"--payload is not valid JSON: {error.msg}") from None
        if not isinstance(loaded, dict):
            raise InvalidSchedule("--payload must be a JSON object")
        data = loaded
    if params:
        data = {**(data or {}), **dict(parse_param(p) for p in params)}
    return data


def _workflow(path: str | None) -> Workflow | None:
    """The workflow of a spec file, read and parsed (checked in full when the schedule is saved)."""
    if path is None:
        return None
    from jobs.workflows import load

    return load(path)


def _masked(view: ScheduleView) -> ScheduleView:
    """The view with secret payload fields masked, its workflow's steps' included."""
    registry = context.registry()

    def shown(kind: Any, payload: dict[str, Any]) -> dict[str, Any]:
        if isinstance(kind, str) and kind in registry and registry.get(kind).has_secrets:
            return registry.get(kind).display(payload)
        return payload

    view = dataclasses.replace(view, payload=shown(view.kind, view.payload))
    if view.workflow is not None and isinstance(view.workflow.get("steps"), list):
        steps = [
            {**step, "payload": shown(step.get("kind"), step.get("payload") or {})}
            for step in view.workflow["steps"]
        ]
        view = dataclasses.replace(view, workflow={**view.workflow, "steps": steps})
    return view


@click.group()
def schedule() -> None:
    """Schedules: jobs the leader (jobs beat) fires on a cron expression or a fixed interval.

    \b
    Examples:
      jobs schedule add nightly-vacuum pg.vacuum_analyze -p name=orders --cron '30 2 * * *' --tz Europe/Berlin
      jobs schedule add heartbeat ping --every 30s --misfire skip
      jobs schedule add nightly-etl --workflow etl.yaml --cron @daily --overlap skip
      jobs schedule list
      jobs schedule pause heartbeat
    """


@schedule.command()
@click.argument("name")
@click.argument("kind", required=False, shell_complete=kind_names)
@_timing_options
@click.option("--paused", is_flag=True, help="Save it paused (resume it later).")
def add(
    name: str,
    kind: str | None,
    cron: str | None,
    every: str | None,
    timezone: str | None,
    params: tuple[str, ...],
    payload_json: str | None,
    workflow_file: str | None,
    misfire: str | None,
    overlap: str | None,
    queue: str | None,
    priority: int | None,
    as_json: bool,
    paused: bool,
) -> None:
    """Add schedule NAME firing jobs of KIND, or the workflow of --workflow FILE (give --cron or --every)."""
    from jobs import schedules
    from jobs.cli.output import err
    from jobs.schedules import ScheduleSpec

    if (cron is None) == (every is None):
        raise InvalidSchedule("give --cron EXPR or --every DURATION (one of them)")
    if (kind is None) == (workflow_file is None):
        raise InvalidSchedule("give a KIND or --workflow FILE (one of them)")
    spec = ScheduleSpec(
        name=name,
        kind=kind,
        workflow=_workflow(workflow_file),
        payload=_payload(payload_json, params) or {},
        cron=cron,
        every=every,
        timezone=timezone or "UTC",
        misfire=misfire or "once",  # type: ignore[arg-type]  # click.Choice checked it
        overlap=overlap or "allow",  # type: ignore[arg-type]
        queue=queue,
        priority=priority,
        enabled=not paused,
    )
    view = schedules.add(context.settings(), context.registry(), spec, by=context.who())
    if as_json:
        emit_json(_masked(view).as_dict())
        return
    schedule_tables.schedule(_masked(view))
    err.print(f"schedule {name} added" + (" (paused)" if paused else ""))


@schedule.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List the schedules (next three firings in each one's zone, last firing) and the maintenance loops."""
    from jobs import maintenance_runs, schedules
    from jobs.cli.output import err

    settings = context.settings()
    views = [_masked(view) for view in schedules.list_schedules(settings)]
    loops = maintenance_runs.last_runs(settings)
    leader = _leader()
    if as_json:
        emit_json({"leader": leader, "schedules": [view.as_dict() for view in views], "maintenance": loops})
        return
    schedule_tables.schedules(views)
    schedule_tables.loops(loops)
    if leader is None:
        err.print(
            "[yellow]warning:[/] no beat is leading: schedules do not fire and maintenance does not run "
            "until one starts (jobs beat); missed slots then follow each schedule's misfire policy"
        )
    else:
        err.print(f"leader: {leader}")


def _leader() -> str | None:
    from jobs import db
    from jobs.leader import current_leader

    with db.transaction(context.settings()) as conn:
        return current_leader(conn)


@schedule.command()
@name_argument
@json_option
def show(name: str, as_json: bool) -> None:
    """Show a schedule: its definition, next five firings, last skip or error, recent firings."""
    from jobs import schedules

    settings = context.settings()
    view = schedules.get(settings, name, count=5)
    firings = schedules.recent_firings(settings, name)
    if as_json:
        emit_json({**_masked(view).as_dict(), "firings": [firing.as_dict() for firing in firings]})
        return
    schedule_tables.schedule(_masked(view), firings=firings)


@schedule.command()
@name_argument
@click.option(
    "--kind",
    help="Fire jobs of this kind instead (of another kind's, or of a workflow; the payload must fit it).",
    shell_complete=kind_names,
)
@_timing_options
def edit(
    name: str,
    kind: str | None,
    cron: str | None,
    every: str | None,
    timezone: str | None,
    params: tuple[str, ...],
    payload_json: str | None,
    workflow_file: str | None,
    misfire: str | None,
    overlap: str | None,
    queue: str | None,
    priority: int | None,
    as_json: bool,
) -> None:
    """Change schedule NAME: -p merges into the payload, --payload replaces it, --workflow FILE
    makes it fire that workflow (instead of its workflow, or of its kind's jobs).

    Changing when it fires (--cron, --every, --tz) starts it afresh: it fires
    from the first slot after now.
    """
    from jobs import schedules
    from jobs.cli.output import err

    if kind is not None and workflow_file is not None:
        raise InvalidSchedule("give --kind or --workflow FILE, not both")
    changes: dict[str, Any] = {
        "kind": kind,
        "workflow": _workflow(workflow_file),
        "cron": cron,
        "every": every,
        "timezone": timezone,
        "misfire": misfire,
        "overlap": overlap,
        "queue": queue,
        "priority": priority,
    }
    if payload_json is not None:
        changes["payload"] = _payload(payload_json, ())
    if params:
        changes["params"] = dict(parse_param(p) for p in params)
    if not any(value is not None for value in changes.values()):
        raise InvalidSchedule("nothing to change: give at least one option (see jobs schedule edit --help)")
    view = schedules.edit(context.settings(), context.registry(), name, by=context.who(), **changes)
    if as_json:
        emit_json(_masked(view).as_dict())
        return
    schedule_tables.schedule(_masked(view))
    err.print(f"schedule {name} changed")


@schedule.command()
@name_argument
@json_option
def pause(name: str, as_json: bool) -> None:
    """Pause a schedule: it fires nothing until resumed."""
    _set_enabled(name, False, as_json)


@schedule.command()
@name_argument
@json_option
def resume(name: str, as_json: bool) -> None:
    """Resume a paused schedule from its next slot (the slots it missed while paused never fire)."""
    _set_enabled(name, True, as_json)


def _set_enabled(name: str, enabled: bool, as_json: bool) -> None:
    from jobs import schedules
    from jobs.cli.output import err

    view, changed = schedules.set_enabled(context.settings(), name, enabled, by=context.who())
    if as_json:
        emit_json({**_masked(view).as_dict(), "changed": changed})
        return
    word = "resumed" if enabled else "paused"
    if not changed:
        err.print(f"schedule {name} was already {'active' if enabled else 'paused'}")
    else:
        following = ", ".join(schedule_tables.at(slot, view.timezone) for slot in view.next)
        err.print(f"schedule {name} {word}" + (f"; next: {following}" if following else ""))


@schedule.command()
@name_argument
@json_option
def trigger(name: str, as_json: bool) -> None:
    """Fire a schedule now, once, marked as manual (also when paused); prints the job's id (the
    workflow's, for a schedule firing a workflow)."""
    from jobs import schedules
    from jobs.cli.output import err
    from jobs.workflows import WorkflowId

    fired, slot = schedules.trigger(context.producer(), name, by=context.who())
    workflow = isinstance(fired, WorkflowId)
    if as_json:
        emit_json({"id": fired, "schedule": name, "slot": slot, "manual": True, "workflow": workflow})
        return
    click.echo(str(fired))
    err.print(f"schedule {name} fired by hand as {'workflow' if workflow else 'job'} {fired}")


@schedule.command()
@name_argument
@json_option
def remove(name: str, as_json: bool) -> None:
    """Delete a schedule; the jobs it already fired stay in the ledger."""
    from jobs import schedules
    from jobs.cli.output import err

    view = schedules.remove(context.settings(), name)
    if as_json:
        emit_json({"removed": name, "schedule": _masked(view).as_dict()})
        return
    err.print(f"schedule {name} removed; the jobs it fired stay in the ledger")
