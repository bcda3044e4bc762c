"""Options several commands share, declared once, and the value types they parse."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from jobs.durations import parse_duration, parse_instant
from jobs.jsonsafe import MAX_INT_DIGITS

__all__ = [
    "DURATION",
    "INSTANT",
    "SINCE",
    "TOO_LONG",
    "json_output",
    "parse_param",
    "payload_params",
    "worker_timeout",
]


class DurationType(click.ParamType[float]):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


class InstantType(click.ParamType[datetime]):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time like 2026-01-31T09:00:00+01:00", param, ctx)


class SinceType(click.ParamType[datetime]):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        try:
            return parse_instant(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


#: A duration (30s, 10m, 2h, or seconds), in seconds.
DURATION = DurationType()
#: An ISO 8601 time.
INSTANT = InstantType()
#: An ISO 8601 time, or a duration ago (1h).
SINCE = SinceType()


def json_output[F: Callable[..., Any]](help: str = "Print JSON.") -> Callable[[F], F]:
    """``--json``: the command prints one JSON document on stdout (its ``as_json`` argument)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


#: How long commands that ask the workers (Celery's inspect) wait for their answers.
worker_timeout = click.option(
    "--timeout",
    type=click.FloatRange(0.1),
    default=1.0,
    show_default=True,
    help="Seconds to wait for workers to answer.",
)

#: ``-p KEY=VALUE``, repeatable: payload fields, each read by ``parse_param`` (the command's ``params``).
payload_params = click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A payload field (repeatable); the kind's model coerces the value.",
)

# json.loads refuses an integer longer than this with a ValueError that is no JSONDecodeError.
TOO_LONG = f"an integer of more than {MAX_INT_DIGITS} digits, which the ledger cannot store"


def parse_param(text: str) -> tuple[str, Any]:
    """One ``-p KEY=VALUE``: the value is text, or JSON when it starts with ``[`` or ``{``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="-p")
    if value[:1] in "[{":
        try:
            return key, json.loads(value)
        except json.JSONDecodeError as error:
            raise click.BadParameter(f"{key}: invalid JSON ({error.msg})", param_hint="-p") from None
        except ValueError:
            raise click.BadParameter(f"{key}: {TOO_LONG}", param_hint="-p") from None
    return key, value
