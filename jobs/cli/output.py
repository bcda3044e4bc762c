"""Output for people (rich, on stderr unless it is the data) and for scripts (``--json`` on stdout).

``console`` and ``err`` are made on first use (PEP 562): rich is not loaded by
commands that print nothing through it, nor by shell completion.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from rich.console import Console

    console: Console
    err: Console

__all__ = ["console", "emit_json", "err", "fail", "first_line", "humanize"]


def __getattr__(name: str) -> Any:
    if name not in ("console", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    made = globals()
    if name not in made:
        from rich.console import Console

        if name == "console":
            # Piped output is not cut to 80 columns: tables stay one row per job (scripts should use --json).
            made[name] = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
        else:
            made[name] = Console(stderr=True, highlight=False, soft_wrap=True)
    return made[name]


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def emit_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    click.echo(json.dumps(data, default=_default, indent=2, sort_keys=True))


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with ``code``; never a traceback. The message is text, not
    markup (a name like ``[bold]x`` from the user prints as typed)."""
    from rich.markup import escape

    __getattr__("err").print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    sys.exit(code)


def first_line(error: BaseException) -> str:
    """An error's message for a one-line report: its first line, or its type's name if it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def humanize(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


STATE_STYLES = {
    "scheduled": "cyan",
    "held": "bright_magenta",
    "queued": "blue",
    "running": "yellow",
    "retrying": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}


def state(text: str) -> str:
    return f"[{STATE_STYLES.get(text, 'white')}]{text}[/]"
