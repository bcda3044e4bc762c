"""Flow control's vocabulary: limits, unique windows and debounce, as a kind declares them.

::

    @jobs.kind(
        "crm.sync",
        payload=Sync,
        limits=[
            jobs.Limit("crm-per-tenant", concurrency=2, key="tenant"),
            jobs.Limit("crm-api", rate="20/s", burst=5),
        ],
        unique=jobs.Unique(fields=("tenant", "order_id"), period=60),
        debounce=jobs.Debounce(fields=("tenant",), period=5),
    )

A **limit** is a concurrency cap (at most N admitted, unfinished jobs) or a rate (at most N
starts per period, with a burst), for all jobs of a kind, per value of a payload field
(``key``, a dotted path), or for a queue. What a limit means and how exact it is:
docs/flow-control.md. Declared limits are written to the ledger's ``limits`` table, where
``jobs limits`` shows and changes them at runtime (``jobs.limit_store``); admission is the
ledger's (``jobs.ledger.admission``). Pure: no database here.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from jobs.errors import InvalidLimit

__all__ = [
    "PERIODS",
    "Debounce",
    "Limit",
    "Unique",
    "check_path",
    "content_key",
    "key_of",
    "parse_path",
    "parse_rate",
]

#: The periods a rate may name, in seconds.
PERIODS = {"s": 1.0, "second": 1.0, "m": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,62}$")
_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*$")


def parse_rate(text: str) -> tuple[int, float]:
    """``"20/s"``, ``"100/minute"``, ``"5/10s"`` as (count, period in seconds)."""
    found = _RATE.match(text.lower())
    if found is None or found.group(3) not in PERIODS:
        raise InvalidLimit(f"rate {text!r} is not N/PERIOD: write it like 20/s, 100/minute or 5/hour")
    count = int(found.group(1))
    multiple = float(found.group(2)) if found.group(2) else 1.0
    if count < 1 or multiple <= 0:
        raise InvalidLimit(f"rate {text!r} must allow at least one start per period: write it like 20/s")
    return count, multiple * PERIODS[found.group(3)]


def parse_path(text: str) -> tuple[str, ...]:
    """A dotted payload field path (``customer.id``) as its segments."""
    parts = tuple(text.split("."))
    if not text or not all(_SEGMENT.match(part) for part in parts):
        raise InvalidLimit(f"field path {text!r} must be dotted field names, like tenant or customer.id")
    return parts


def check_path(model: type[BaseModel], path: Sequence[str], *, kind: str) -> None:
    """Refuse a path whose first segments are not fields of the kind's model (below a field that is
    a dict or ``Any``, any name is allowed: the payload decides)."""
    current: Any = model
    for depth, part in enumerate(path):
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return  # a dict or Any: its keys are the payload's business
        if part not in fields:
            where = ".".join(path[:depth]) or "the payload"
            known = ", ".join(sorted(fields)) or "none"
            raise InvalidLimit(
                f"kind {kind!r} has no field {'.'.join(path[: depth + 1])!r} ({where} has: {known})"
            )
        current = _model_of(fields[part].annotation)


def _model_of(annotation: Any) -> Any:
    """The pydantic model a field holds (through ``X | None``), or ``None`` for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(models) == 1:
            return _model_of(models[0])
    return None


def key_of(payload: Any, path: Sequence[str]) -> str:
    """The key a payload falls under for a keyed limit, as PostgreSQL's ``payload #>> path`` gives
    it (a string as it is, anything else as JSON text; '' when the path is missing or null)."""
    value = payload
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


def content_key(kind: str, payload: Any, fields: Sequence[tuple[str, ...]]) -> str:
    """What identifies a payload's content for a unique window or a debounce: the kind and the
    values at ``fields`` (every field when empty), hashed."""
    chosen = payload if not fields else [[".".join(path), _value_at(payload, path)] for path in fields]
    text = json.dumps([kind, chosen], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _value_at(payload: Any, path: Sequence[str]) -> Any:
    value = payload
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit on starting jobs: ``concurrency`` (at most N unfinished admitted jobs) or ``rate``
    (``"N/PERIOD"`` starts, plus ``burst`` at once), per ``key`` (a payload field path) or for
    all of the kind's jobs; ``queue`` instead of a kind limits every job of that queue."""

    name: str
    concurrency: int | None = None
    rate: str | None = None
    burst: int = 0
    key: str | None = None
    queue: str | None = None
    kind: str | None = None
    """Filled in when declared on a kind."""
    rate_count: int | None = field(default=None, init=False)
    period: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidLimit(
                f"limit name {self.name!r} must be lower-case letters, digits and . _ : - (at most 63)"
            )
        if (self.concurrency is None) == (self.rate is None):
            raise InvalidLimit(f"limit {self.name!r}: give a concurrency or a rate (one of them)")
        if self.concurrency is not None and self.concurrency < 1:
            raise InvalidLimit(f"limit {self.name!r}: concurrency must be at least 1")
        if self.burst < 0:
            raise InvalidLimit(f"limit {self.name!r}: burst cannot be negative")
        if self.burst and self.rate is None:
            raise InvalidLimit(f"limit {self.name!r}: a burst goes with a rate")
        if self.rate is not None:
            count, period = parse_rate(self.rate)
            object.__setattr__(self, "rate_count", count)
            object.__setattr__(self, "period", period)
        if self.key is not None:
            parse_path(self.key)
            if self.queue is not None:
                raise InvalidLimit(f"limit {self.name!r}: a key is a payload field; a queue limit has none")
        if self.queue is not None and self.kind is not None:
            raise InvalidLimit(f"limit {self.name!r}: limit a kind or a queue, not both")

    @property
    def path(self) -> tuple[str, ...] | None:
        return parse_path(self.key) if self.key is not None else None

    def describe(self) -> str:
        """``2 at once per tenant`` / ``20/s (burst 5)``."""
        if self.concurrency is not None:
            what = f"{self.concurrency} at once"
        else:
            what = f"{self.rate}" + (f" (burst {self.burst})" if self.burst else "")
        return what + (f" per {self.key}" if self.key else "")


@dataclass(frozen=True, slots=True)
class Unique:
    """At submit, a job whose kind and ``fields`` (all of the payload when empty) equal those of a
    job submitted within ``period`` seconds, or of one still unfinished when ``period`` is
    ``None``, is not created: the submit returns that job's id (``duplicate``)."""

    fields: tuple[str, ...] = ()
    period: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        for path in self.fields:
            parse_path(path)
        if self.period is not None and self.period <= 0:
            raise InvalidLimit("a unique window's period must be positive (or None: while unfinished)")

    @property
    def paths(self) -> tuple[tuple[str, ...], ...]:
        return tuple(parse_path(path) for path in self.fields)

    def describe(self) -> str:
        """``same tenant within 60s`` / ``same payload while unfinished``."""
        when = "while unfinished" if self.period is None else f"within {self.period:g}s"
        return f"same {_fields_text(self.fields)} {when}"


@dataclass(frozen=True, slots=True)
class Debounce:
    """Jobs of the kind with equal ``fields`` submitted less than ``period`` seconds apart collapse
    into one, which runs ``period`` seconds after the last of them, with the latest payload."""

    period: float
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        for path in self.fields:
            parse_path(path)
        if self.period <= 0:
            raise InvalidLimit("a debounce period must be positive")

    @property
    def paths(self) -> tuple[tuple[str, ...], ...]:
        return tuple(parse_path(path) for path in self.fields)

    def describe(self) -> str:
        """``same tenant: runs 5s after the last submission``."""
        return f"same {_fields_text(self.fields)}: runs {self.period:g}s after the last submission"


def _fields_text(fields: Sequence[str]) -> str:
    return ", ".join(fields) if fields else "payload"
