"""How ``jobs schedule`` prints for people: a schedule, the list of them, the maintenance loops.

rich is imported in the functions that print: importing this module (when a
command line is completed) loads none of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from jobs.cli.output import humanize, state

if TYPE_CHECKING:
    from jobs.schedules import Firing, ScheduleView

__all__ = ["at", "loops", "schedule", "schedules"]


def at(moment: datetime | None, zone: str) -> str:
    """A moment in ``zone``, to the second, with the zone's abbreviation; ``-`` for none."""
    if moment is None:
        return "-"
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S %Z")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _last(view: ScheduleView) -> str:
    last = view.last_job or view.last_workflow
    if last is None:
        return "never fired"
    return f"{at(view.last_fired_at, view.timezone)} {state(last.state)}"


def _steps(workflow: dict[str, Any], most: int = 10) -> str:
    """A workflow's steps, each with its kind and the steps it comes after (the first ``most``)."""
    steps = workflow.get("steps") or []
    shown = []
    for step in steps[:most]:
        after = [parent["step"] for parent in step.get("after") or []]
        shown.append(f"{step['name']} ({step['kind']})" + (f" after {', '.join(after)}" if after else ""))
    more = f"; … {len(steps) - most} more" if len(steps) > most else ""
    return "; ".join(shown) + more


def _status(view: ScheduleView) -> str:
    text = "[green]active[/]" if view.enabled else "[yellow]paused[/]"
    return f"{text} (code)" if view.declared else text


def schedule(view: ScheduleView, *, firings: Sequence[Firing] = ()) -> None:
    """One schedule, as a grid of its fields, then its recent firings (its payload already masked)."""
    from rich.table import Table

    from jobs.cli.output import console

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    zone = view.timezone
    rows: list[tuple[str, str]] = [("name", view.name)]
    if view.workflow is None:
        rows += [("kind", str(view.kind)), ("payload", json.dumps(view.payload))]
    else:
        rows += [("workflow", view.target.removeprefix("workflow ")), ("steps", _steps(view.workflow))]
    rows += [
        ("when", view.timing),
        ("status", _status(view) + (" — declared in beat/declared.py" if view.declared else "")),
        ("misfire", view.misfire),
        ("overlap", view.overlap),
    ]
    if view.queue is not None:
        rows.append(("queue", view.queue))
    if view.priority is not None:
        rows.append(("priority", str(view.priority)))
    rows.append(("next", ", ".join(at(slot, zone) for slot in view.next) or "- (paused)"))
    rows.append(("last firing", _last(view)))
    if view.last_job is not None:
        rows.append(("last job", view.last_job.id))
    if view.last_workflow is not None:
        rows.append(("last workflow", view.last_workflow.id))
    if view.last_skip_at is not None:
        reason = f"{at(view.last_skip_at, zone)}: {view.last_skip_reason}"
        rows.append(("last skip", f"{reason} ({view.skipped} slot(s) skipped in all)"))
    if view.last_error:
        rows.append(("last error", f"{at(view.last_error_at, zone)}: {view.last_error}"))
    rows.append(("changed", f"{humanize(view.updated_at)} by {view.updated_by or '-'}"))
    for key, value in rows:
        grid.add_row(key, value)
    console.print(grid)
    if firings:
        table = Table(title="recent firings", title_justify="left", box=None, pad_edge=False)
        fires_workflows = view.workflow is not None
        for column in ("slot", "workflow" if fires_workflows else "job", "state", "fired"):
            table.add_column(column, no_wrap=True)
        for firing in firings:
            slot = at(firing.slot, zone)
            other = (
                "" if firing.workflow == fires_workflows else (" (workflow)" if firing.workflow else " (job)")
            )
            table.add_row(
                slot + (" (manual)" if firing.manual else ""),
                firing.id + other,
                state(firing.state),
                at(firing.created_at, zone),
            )
        console.print(table)


def schedules(views: Sequence[ScheduleView]) -> None:
    """The schedules as one table, a row each."""
    from rich.table import Table

    from jobs.cli.output import console, err

    if not views:
        err.print("no schedules yet (jobs schedule add NAME KIND --cron EXPR, or NAME --workflow FILE)")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("name", "fires", "when", "status", "next (schedule's zone)", "last firing"):
        table.add_column(column, no_wrap=True)
    table.add_column("note", overflow="ellipsis", no_wrap=True, max_width=60)
    for view in views:
        note = ""
        if view.last_error:
            note = f"[red]error:[/] {view.last_error}"
        elif view.last_skip_at is not None:
            note = f"skipped {view.skipped}: {view.last_skip_reason}"
        table.add_row(
            view.name,
            view.target,
            view.timing,
            _status(view),
            ", ".join(at(slot, view.timezone) for slot in view.next) or "-",
            _last(view),
            note,
        )
    console.print(table)


def loops(runs: Sequence[dict[str, Any]]) -> None:
    """The maintenance loops' last runs, as the leader recorded them."""
    from rich.table import Table

    from jobs.cli.output import console, err

    if not runs:
        err.print("no maintenance loop has run yet (they run on the leader: jobs beat)")
        return
    table = Table(title="maintenance (on the leader)", title_justify="left", box=None, pad_edge=False)
    for column in ("loop", "every", "last run", "result", "error"):
        table.add_column(column, no_wrap=True)
    for loop in runs:
        table.add_row(
            loop["name"],
            f"{loop['interval_seconds']:g}s",
            f"{humanize(loop['last_run_at'])} ({_ago(loop['seconds_ago'])})",
            "-" if loop["last_result"] is None else str(loop["last_result"]),
            loop["last_error"] or "",
        )
    console.print(table)
