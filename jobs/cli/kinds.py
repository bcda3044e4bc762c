"""``jobs kinds``: what can be submitted, and each kind's payload schema and options."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from jobs.cli import context, options
from jobs.cli.completion import kind_names
from jobs.cli.output import emit_json

if TYPE_CHECKING:
    from jobs.kinds import Kind
    from jobs.limits import Debounce, Unique

__all__ = ["kinds"]


def describe(kind: Kind) -> dict[str, Any]:
    settings = context.settings()
    return {
        "name": kind.name,
        "description": kind.description,
        "queue": kind.queue or settings.default_queue,
        "priority": kind.priority,
        "max_attempts": kind.max_attempts or settings.max_attempts,
        "backoff": {
            "base": kind.backoff.base,
            "factor": kind.backoff.factor,
            "maximum": kind.backoff.maximum,
            "jitter": kind.backoff.jitter,
        },
        "soft_time_limit": kind.soft_time_limit or settings.soft_time_limit,
        "hard_time_limit": kind.hard_time_limit or settings.hard_time_limit,
        "retry_on": [exc.__name__ for exc in kind.retry_on],
        "unique": _flow(kind.unique),
        "debounce": _flow(kind.debounce),
        "payload_schema": kind.payload.model_json_schema(),
        "result_schema": kind.result.model_json_schema() if kind.result else None,
    }


def _flow(spec: Unique | Debounce | None) -> dict[str, Any] | None:
    return None if spec is None else {"fields": list(spec.fields), "period": spec.period}


@click.group(invoke_without_command=True)
@options.json_output()
@click.pass_context
def kinds(ctx: click.Context, as_json: bool) -> None:
    """List the job kinds this installation knows."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from jobs.cli.output import console

    known = list(context.registry())
    if as_json:
        emit_json([describe(k) for k in known])
        return
    table = Table(box=None, pad_edge=False)
    for column in ("kind", "queue", "attempts", "description"):
        table.add_column(column)
    for kind in known:
        info = describe(kind)
        table.add_row(kind.name, info["queue"], str(info["max_attempts"]), kind.description)
    console.print(table)


@kinds.command()
@click.argument("name", shell_complete=kind_names)
@options.json_output()
def show(name: str, as_json: bool) -> None:
    """Print a kind's payload JSON Schema and its options."""
    from jobs.cli.output import console

    kind = context.registry().get(name)
    info = describe(kind)
    if as_json:
        emit_json(info)
        return
    flow = {"unique": kind.unique, "debounce": kind.debounce}
    for key, value in info.items():
        if key.endswith("_schema") or (key in flow and value is None):
            continue
        spec = flow.get(key)
        console.print(f"[bold]{key}[/]: {spec.describe() if spec is not None else value}")
    console.print("[bold]payload schema[/]:")
    console.print_json(json.dumps(info["payload_schema"]))
    if info["result_schema"]:
        console.print("[bold]result schema[/]:")
        console.print_json(json.dumps(info["result_schema"]))
