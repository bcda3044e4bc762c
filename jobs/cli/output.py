"""Output for people (rich, on stderr unless it is the data) and for scripts (``--json`` on stdout)."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime
from typing import Any, NoReturn

import click
from rich.console import Console

__all__ = ["console", "emit_json", "err", "fail", "humanize"]

# Piped output is not cut to 80 columns: tables stay one row per job (scripts should use --json).
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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
    """One line on stderr, then exit with ``code``; never a traceback."""
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    sys.exit(code)


def humanize(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


STATE_STYLES = {
    "scheduled": "cyan",
    "queued": "blue",
    "running": "yellow",
    "retrying": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}


def state(text: str) -> str:
    return f"[{STATE_STYLES.get(text, 'white')}]{text}[/]"
