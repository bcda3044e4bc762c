"""How ``jobs limits`` (and ``jobs top``'s limits panel) print for people.

rich is imported in the functions that print: importing this module (when a
command line is completed) loads none of it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobs.cli.output import humanize

if TYPE_CHECKING:
    from jobs.limit_control import Overview
    from jobs.limit_store import LimitRow
    from jobs.limit_usage import KeyUsage

__all__ = ["key_cells", "key_label", "limit", "limits", "usage_dict"]


def _span(seconds: float) -> str:
    from jobs.observe import span

    return f"{seconds:.1f}s" if seconds < 10 else span(seconds)


def key_label(row: LimitRow, used: KeyUsage) -> str:
    """``tenant=42``, ``(all)`` for a limit without a key, ``other (17 keys)`` for the aggregate."""
    if used.key is None:
        return f"other ({used.keys} key{'' if used.keys == 1 else 's'})"
    if not row.key:
        return "(all)"
    return f"{row.key}={used.key}"


def key_cells(row: LimitRow, used: KeyUsage, now: datetime) -> tuple[str, str, str, str]:
    """Running (``2/2`` against a cap), waiting, the oldest running job's start, the next start
    (a rate limit's), as rich markup."""
    if row.concurrency is not None:
        full = used.running >= row.concurrency
        running = f"{used.running}/{row.concurrency}"
        running = f"[bold red]{running}[/]" if full and used.waiting else running
    else:
        running = str(used.running)
    waiting = f"[yellow]{used.waiting}[/]" if used.waiting else "0"
    started = used.oldest_started_at
    oldest = f"{_span((now - started).total_seconds())} ago" if started else "-"
    following = "-"
    if row.interval is not None and used.key is not None:
        due = used.tat - timedelta(seconds=row.burst * row.interval) if used.tat else None
        left = (due - now).total_seconds() if due else 0.0
        following = f"in {_span(left)}" if left > 0 else "now"
    return running, waiting, oldest, following


def _by(row: LimitRow) -> str:
    return "code" if row.declared else (row.updated_by or "-")


def usage_dict(row: LimitRow, keys: list[KeyUsage]) -> dict[str, Any]:
    """A limit's ``--json`` form: its definition, the totals over its keys, the keys."""
    return {
        **row.as_dict(),
        "target": row.target,
        "definition": row.describe(),
        "running": sum(used.running for used in keys),
        "waiting": sum(used.waiting for used in keys),
        "keys": [used.as_dict() for used in keys],
    }


def _keys_table(title: str | None) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, title=title, title_justify="left")
    for name, justify in (
        ("limit", "left"),
        ("key", "left"),
        ("running", "right"),
        ("waiting", "right"),
        ("oldest start", "right"),
        ("next start", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]  # a literal
    return table


def limits(seen: Overview, *, keys_per_limit: int) -> None:
    """Every limit (definition, totals, who set it), then the busiest keys of each."""
    from rich.markup import escape
    from rich.table import Table

    from jobs.cli.output import console, err

    if not seen.limits:
        err.print("no limits (declare them on a kind, or: jobs limits set NAME --kind KIND --concurrency N)")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("limit", "limits", "at most", "running", "waiting", "keys", "set by"):
        table.add_column(name, no_wrap=True)
    busy = _keys_table("busiest keys")
    for row in seen.limits:
        keys = seen.keys(row.name)
        waiting = sum(used.waiting for used in keys)
        table.add_row(
            escape(row.name),
            escape(row.target),
            escape(row.describe()),
            str(sum(used.running for used in keys)),
            f"[yellow]{waiting}[/]" if waiting else "0",
            str(sum(used.keys for used in keys)),
            escape(_by(row)),
        )
        for used in keys[:keys_per_limit]:
            if used.running or used.waiting:
                busy.add_row(escape(row.name), escape(key_label(row, used)), *key_cells(row, used, seen.now))
    console.print(table)
    if busy.row_count:
        console.print()
        console.print(busy)


def limit(seen: Overview) -> None:
    """One limit: its definition as a grid, then every key shown (the busiest first)."""
    from rich.markup import escape
    from rich.table import Table

    from jobs.cli.output import console

    row = seen.limits[0]
    keys = seen.keys(row.name)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    how = "declared in code" if row.declared else "set at runtime (wins over the code's declaration, if any)"
    for field, value in (
        ("name", row.name),
        ("limits", row.target),
        ("at most", row.describe()),
        ("source", how),
        ("changed", f"{humanize(row.updated_at)} by {_by(row)}"),
        ("running", str(sum(used.running for used in keys))),
        ("waiting", str(sum(used.waiting for used in keys))),
    ):
        grid.add_row(field, escape(value))
    console.print(grid)
    if keys:
        table = _keys_table(None)
        for used in keys:
            table.add_row(escape(row.name), escape(key_label(row, used)), *key_cells(row, used, seen.now))
        console.print()
        console.print(table)
