"""A schedule as people and scripts see it: its definition, next slots (in its zone), last firing.

``ScheduleView`` is what the store returns and ``jobs schedule list`` and
``show`` print; ``as_dict`` is its ``--json`` form. Pure: made from a row read
by the store and the database's ``now``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from jobs.errors import InvalidSchedule
from jobs.schedules.spec import describe_target, describe_timing, timing_of
from jobs.schedules.timing import parse_zone, upcoming

__all__ = ["LastJob", "ScheduleView", "view"]


@dataclass(frozen=True, slots=True)
class LastJob:
    """The job (or workflow, with its derived state) of a schedule's last firing; ``state`` is
    ``pruned`` once the ledger let it go."""

    id: str
    state: str


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """One schedule: its saved definition, its next slots, and how its last firings went.

    It fires a job of ``kind`` with ``payload``, or a ``workflow`` (its spec as saved);
    ``target`` says which in a few words. Its last firing is ``last_job`` or ``last_workflow``.
    """

    name: str
    kind: str | None
    payload: dict[str, Any]
    workflow: dict[str, Any] | None
    target: str
    cron: str | None
    every_seconds: int | None
    timing: str
    timezone: str
    enabled: bool
    declared: bool
    misfire: str
    overlap: str
    queue: str | None
    priority: int | None
    next: tuple[datetime, ...]
    handled_until: datetime
    last_slot: datetime | None
    last_fired_at: datetime | None
    last_job: LastJob | None
    last_workflow: LastJob | None
    last_skip_at: datetime | None
    last_skip_reason: str | None
    skipped: int
    last_error: str | None
    last_error_at: datetime | None
    created_at: datetime
    updated_at: datetime
    updated_by: str | None

    @classmethod
    def from_row(
        cls, row: Any, now: datetime, *, count: int = 3, workflow_state: str | None = None
    ) -> ScheduleView:
        """A ``schedules`` row (with its last job's state) as of ``now``, with its next ``count`` slots;
        ``workflow_state``: its last workflow's derived state (``None``: pruned).

        A cron expression saved under older, looser rules has no next slots: the
        view carries the reason as its ``last_error`` (the leader cannot fire it either).
        """
        zone = parse_zone(row.timezone)
        following: list[datetime] = []
        problem = None
        if row.enabled:
            try:
                following = upcoming(timing_of(row), max(now, row.handled_until), count)
            except InvalidSchedule as error:
                where = (
                    "in beat/declared.py" if row.declared else f"with jobs schedule edit {row.name} --cron"
                )
                problem = f"{error.message} (fix it {where})"
        last_job = None
        if row.last_job_id is not None:
            last_job = LastJob(id=str(row.last_job_id), state=row.last_job_state or "pruned")
        last_workflow = None
        if row.last_workflow_id is not None:
            last_workflow = LastJob(id=str(row.last_workflow_id), state=workflow_state or "pruned")
        return cls(
            name=row.name,
            kind=row.kind,
            payload=row.payload,
            workflow=row.workflow,
            target=describe_target(row),
            cron=row.cron,
            every_seconds=row.every_seconds,
            timing=describe_timing(row),
            timezone=row.timezone,
            enabled=row.enabled,
            declared=row.declared,
            misfire=row.misfire,
            overlap=row.overlap,
            queue=row.queue,
            priority=row.priority,
            next=tuple(slot.astimezone(zone) for slot in following),
            handled_until=row.handled_until,
            last_slot=row.last_slot.astimezone(zone) if row.last_slot else None,
            last_fired_at=row.last_fired_at,
            last_job=last_job,
            last_workflow=last_workflow,
            last_skip_at=row.last_skip_at,
            last_skip_reason=row.last_skip_reason,
            skipped=row.skipped,
            last_error=problem or row.last_error,
            last_error_at=now if problem else row.last_error_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            updated_by=row.updated_by,
        )

    def as_dict(self) -> dict[str, Any]:
        """The schedule as ``--json`` prints it (``next`` a list, as JSON has it)."""
        return {**asdict(self), "next": list(self.next)}


def view(row: Any, now: datetime, *, count: int = 3) -> dict[str, Any]:
    """A ``schedules`` row as ``--json`` prints it (``ScheduleView.from_row(...).as_dict()``)."""
    return ScheduleView.from_row(row, now, count=count).as_dict()
