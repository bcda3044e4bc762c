"""``jobs limits``: list, set, show and remove the limits on starting jobs (flow control).

A change applies at once: the command commits it, then admits the held jobs that now fit and
publishes them (``jobs.limit_control``). Listing first writes the limits this installation's
kinds declare in code (as the leader does), so what is listed is what admission uses. A value
set here wins over the code's declaration of the same name until ``jobs limits remove`` gives
it back to the code. See docs/operations.md, "Operating limits".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from jobs.cli import context
from jobs.cli.completion import kind_names, limit_names, queue_names
from jobs.cli.options import json_output
from jobs.cli.output import emit_json
from jobs.errors import InvalidLimit

# jobs.limit_control (SQLAlchemy, Celery's wire) and rich are imported in the functions that use
# them: completing a command line (``jobs limits show <TAB>``) loads none of them.
if TYPE_CHECKING:
    from jobs.kinds import Registry
    from jobs.limit_store import LimitRow
    from jobs.limits import Limit

__all__ = ["check_options", "limits", "spec_of"]

json_option = json_output()
name_argument = click.argument("name", shell_complete=limit_names)
top_option = click.option(
    "--top",
    type=click.IntRange(1, 1000),
    default=None,
    help="Keys shown per limit, the busiest first (the rest are summed as 'other').",
)


def check_options(
    *,
    kind: str | None,
    queue: str | None,
    key: str | None,
    concurrency: int | None,
    rate: str | None,
    burst: int | None,
) -> None:
    """Refuse a combination of ``jobs limits set`` options that cannot make a limit, in one line."""
    if (concurrency is None) == (rate is None):
        raise InvalidLimit("give --concurrency N or --rate N/PERIOD (one of them)")
    if burst is not None and rate is None:
        raise InvalidLimit("--burst goes with --rate (a burst is how many starts a rate allows at once)")
    if kind is not None and queue is not None:
        raise InvalidLimit("give --kind KIND or --queue QUEUE, not both")
    if key is not None and queue is not None:
        raise InvalidLimit("--key is a payload field: it goes with --kind, not --queue")
    if key is not None and kind is None:
        raise InvalidLimit("--key is a payload field of a kind: give --kind KIND too")


def spec_of(
    name: str,
    *,
    kind: str | None,
    queue: str | None,
    key: str | None,
    concurrency: int | None,
    rate: str | None,
    burst: int | None,
    registry: Registry,
    existing: LimitRow | None = None,
) -> Limit:
    """The limit ``jobs limits set`` asks for, checked against the kinds; ``InvalidLimit`` (or
    ``UnknownKind``) in one line otherwise. Without ``--kind``/``--queue`` an ``existing`` limit
    keeps what it limits."""
    from jobs.limits import Limit, check_path

    check_options(kind=kind, queue=queue, key=key, concurrency=concurrency, rate=rate, burst=burst)
    if kind is None and queue is None:
        if existing is None:
            raise InvalidLimit(f"limit {name!r} is new: say what it limits (--kind KIND or --queue QUEUE)")
        kind, queue, key = existing.kind, existing.queue, existing.key
    elif kind is not None:
        registry.get(kind)  # UnknownKind, with the closest name
    limit = Limit(name, concurrency=concurrency, rate=rate, burst=burst or 0, key=key, queue=queue, kind=kind)
    if kind is not None and limit.path is not None and kind in registry:
        check_path(registry.get(kind).payload, limit.path, kind=kind)
    return limit


@click.group(invoke_without_command=True)
@top_option
@json_option
@click.pass_context
def limits(ctx: click.Context, top: int | None, as_json: bool) -> None:
    """Limits on starting jobs: N at once or N per period, for a kind (per payload key) or a queue.

    Without a command, lists the limits with their busiest keys.

    \b
    Examples:
      jobs limits
      jobs limits set crm-per-tenant --kind crm.sync --key tenant --concurrency 2
      jobs limits set crm-api --kind crm.sync --rate 20/s --burst 5
      jobs limits set mail-cap --queue mail --concurrency 10
      jobs limits show crm-per-tenant
      jobs limits remove crm-per-tenant
    """
    if ctx.invoked_subcommand is None:
        _list(top or 5, as_json)


@limits.command("list")
@top_option
@json_option
def list_(top: int | None, as_json: bool) -> None:
    """List the limits with their busiest keys (what `jobs limits` alone prints)."""
    _list(top or 5, as_json)


def _list(top: int, as_json: bool) -> None:
    from jobs import limit_control
    from jobs.cli import limit_tables

    settings = context.settings()
    limit_control.sync(settings, context.registry())
    seen = limit_control.overview(settings, top=top)
    if as_json:
        emit_json(
            {
                "at": seen.now,
                "limits": [limit_tables.usage_dict(row, seen.keys(row.name)) for row in seen.limits],
            }
        )
        return
    limit_tables.limits(seen, keys_per_limit=top)


@limits.command("set")
@name_argument
@click.option("--kind", help="Limit jobs of this kind.", shell_complete=kind_names)
@click.option("--queue", help="Limit every job of this queue instead.", shell_complete=queue_names)
@click.option(
    "--key", metavar="FIELD", help="One limit per value of this payload field (dotted: customer.id)."
)
@click.option("--concurrency", type=int, metavar="N", help="At most N of its jobs queued or running at once.")
@click.option(
    "--rate", metavar="N/PERIOD", help="At most N starts per period: 20/s, 100/minute, 5/10s, 1000/h."
)
@click.option(
    "--burst", type=int, metavar="N", help="With --rate: N more starts allowed at once (default 0)."
)
@json_option
def set_(
    name: str,
    kind: str | None,
    queue: str | None,
    key: str | None,
    concurrency: int | None,
    rate: str | None,
    burst: int | None,
    as_json: bool,
) -> None:
    """Add or change limit NAME; held jobs that now fit start at once.

    Changing an existing limit's numbers needs no --kind or --queue; what it limits cannot
    change (remove it first). Setting a limit declared in code overrides it until `jobs limits
    remove NAME` gives it back to the code.
    """
    from jobs import limit_control
    from jobs.cli.output import err
    from jobs.limit_store import declared_limits

    settings, registry = context.settings(), context.registry()
    existing = None
    if kind is None and queue is None:  # a change of numbers: the limit keeps what it limits
        check_options(kind=kind, queue=queue, key=key, concurrency=concurrency, rate=rate, burst=burst)
        existing = _existing(name)  # after the options' shape is checked: no ledger for a typo
    limit = spec_of(
        name,
        kind=kind,
        queue=queue,
        key=key,
        concurrency=concurrency,
        rate=rate,
        burst=burst,
        registry=registry,
        existing=existing,
    )
    row, admitted = limit_control.set_limit(settings, registry, limit, by=context.who())
    if as_json:
        emit_json({"limit": row.as_dict(), "admitted": admitted})
        return
    started = f"; {admitted} held job(s) admitted" if admitted else ""
    err.print(f"limit {row.name} set: {row.target}, at most {row.describe()}{started}")
    declared = declared_limits(registry).get(name)
    if declared is not None:
        err.print(
            f"[yellow]note:[/] {name} is declared in code ({declared.describe()}); this value wins until "
            f"`jobs limits remove {name}` gives it back to the code"
        )


def _existing(name: str) -> LimitRow | None:
    from jobs import limit_control
    from jobs.errors import LimitNotFound

    try:
        return limit_control.overview(context.settings(), name, top=1).limits[0]
    except LimitNotFound:
        return None


@limits.command()
@name_argument
@top_option
@json_option
def show(name: str, top: int | None, as_json: bool) -> None:
    """Show limit NAME: what it limits, who set it, and how full each key is (the busiest first)."""
    from jobs import limit_control
    from jobs.cli import limit_tables

    seen = limit_control.overview(context.settings(), name, top=top or 20)
    if as_json:
        emit_json({"at": seen.now, **limit_tables.usage_dict(seen.limits[0], seen.keys(name))})
        return
    limit_tables.limit(seen)


@limits.command()
@name_argument
@json_option
def remove(name: str, as_json: bool) -> None:
    """Remove limit NAME; the jobs it held start unless another limit holds them.

    A limit declared in code is removed in code; one the code declares but an operator set
    goes back to the code's values.
    """
    from jobs import limit_control
    from jobs.cli.output import err

    done = limit_control.remove(context.settings(), context.registry(), name, by=context.who())
    if as_json:
        emit_json(
            {
                "removed": done.restored is None,
                "limit": done.was.as_dict(),
                "restored": None if done.restored is None else done.restored.as_dict(),
                "admitted": done.admitted,
            }
        )
        return
    started = f"; {done.admitted} held job(s) admitted" if done.admitted else ""
    if done.restored is not None:
        err.print(
            f"limit {name} is back to its declaration in code: at most {done.restored.describe()}{started}"
        )
    else:
        err.print(f"limit {name} removed{started}")
