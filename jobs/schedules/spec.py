"""A schedule as declared in code or given on the command line, and its validation.

``validate`` turns a ``ScheduleSpec`` into the ``schedules`` table's column
values, refusing the first problem with one line; ``timing_of`` and
``spec_of`` read a saved row back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs import jsonsafe
from jobs.errors import InvalidSchedule, PayloadTooLarge
from jobs.kinds import Registry
from jobs.schedules.policies import MISFIRE_POLICIES, OVERLAP_POLICIES, Misfire, Overlap
from jobs.schedules.timing import Cron, Every, Timing, parse_cron, parse_every, parse_zone

__all__ = [
    "DEFINITION_COLUMNS",
    "TIMING_COLUMNS",
    "ScheduleSpec",
    "describe_timing",
    "spec_of",
    "timing_of",
    "validate",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule as declared in code (``beat/declared.py``) or given on the command line.

    Give ``cron`` (5 fields or an alias like ``@daily``, read in ``timezone``)
    or ``every`` (seconds, or a duration like ``"30s"``), not both.
    """

    name: str
    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: float | str | None = None
    timezone: str = "UTC"
    misfire: Misfire = "once"
    overlap: Overlap = "allow"
    queue: str | None = None
    priority: int | None = None
    enabled: bool = True


#: The columns that say when a schedule fires; changing one starts it afresh from now.
TIMING_COLUMNS = ("cron", "every_seconds", "timezone")
DEFINITION_COLUMNS = ("kind", "payload", "queue", "priority", *TIMING_COLUMNS, "misfire", "overlap")


def validate(
    spec: ScheduleSpec, registry: Registry, *, max_payload_bytes: int | None = None
) -> dict[str, Any]:
    """The schedule's column values, checked; raises a ``BadInput`` naming the first problem.

    The payload is validated against the kind's model here, when the schedule
    is saved, and stored in its validated form.
    """
    if not _NAME.match(spec.name):
        raise InvalidSchedule(
            f"invalid schedule name {spec.name!r}: use up to 100 letters, digits and . _ : - "
            "(starting with a letter or digit)"
        )
    if (spec.cron is None) == (spec.every is None):
        raise InvalidSchedule(f"schedule {spec.name}: give a cron expression or an interval (one of them)")
    cron = parse_cron(spec.cron) if spec.cron is not None else None
    every = parse_every(spec.every) if spec.every is not None else None
    zone = parse_zone(spec.timezone)
    if spec.misfire not in MISFIRE_POLICIES:
        raise InvalidSchedule(f"invalid misfire policy {spec.misfire!r}: use {', '.join(MISFIRE_POLICIES)}")
    if spec.overlap not in OVERLAP_POLICIES:
        raise InvalidSchedule(f"invalid overlap policy {spec.overlap!r}: use {', '.join(OVERLAP_POLICIES)}")
    if spec.priority is not None and not 0 <= spec.priority <= 9:
        raise InvalidSchedule(f"priority {spec.priority} is out of range: use 0 (first) to 9 (last)")
    if spec.queue is not None and not spec.queue.strip():
        raise InvalidSchedule("a queue name cannot be empty")
    unstorable = jsonsafe.unstorable(spec.queue, root="queue") if spec.queue is not None else None
    if unstorable is not None:
        raise InvalidSchedule(f"schedule {spec.name}: {unstorable}")
    declared = registry.get(spec.kind)
    payload = declared.dump(declared.validate(dict(spec.payload)))
    size = len(declared.to_json(payload).encode())
    if max_payload_bytes is not None and size > max_payload_bytes:
        raise PayloadTooLarge(
            f"payload of {size} bytes is over the limit of {max_payload_bytes} bytes (JOBS_MAX_PAYLOAD_BYTES)"
        )
    return {
        "name": spec.name,
        "kind": declared.name,
        "payload": payload,
        "queue": spec.queue,
        "priority": spec.priority,
        "cron": cron,
        "every_seconds": every,
        "timezone": zone.key,
        "misfire": spec.misfire,
        "overlap": spec.overlap,
        "enabled": spec.enabled,
    }


def timing_of(row: Any) -> Timing:
    """A saved schedule's timing; ``InvalidSchedule`` for a cron expression saved under older rules."""
    if row.cron is not None:
        return Cron(parse_cron(row.cron), parse_zone(row.timezone))
    return Every(int(row.every_seconds))


def describe_timing(row: Any) -> str:
    """A saved schedule's timing in a few words: ``cron 30 2 * * * (Europe/Berlin)``, ``every 30s``."""
    if row.cron is not None:
        return f"cron {row.cron} ({row.timezone})" if row.timezone != "UTC" else f"cron {row.cron}"
    return Every(int(row.every_seconds)).describe()


def spec_of(row: Any) -> ScheduleSpec:
    """A saved schedule as the spec it was saved from (its validated form)."""
    return ScheduleSpec(
        name=row.name,
        kind=row.kind,
        payload=row.payload,
        cron=row.cron,
        every=row.every_seconds,
        timezone=row.timezone,
        misfire=row.misfire,
        overlap=row.overlap,
        queue=row.queue,
        priority=row.priority,
        enabled=row.enabled,
    )
