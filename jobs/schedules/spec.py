"""A schedule as declared in code or given on the command line, and its validation.

``validate`` turns a ``ScheduleSpec`` into the ``schedules`` table's column
values, refusing the first problem with one line; ``timing_of`` and
``spec_of`` read a saved row back. A schedule fires a job of a kind with a
payload, or a workflow (``jobs.workflows``, imported only when one is checked:
importing this package loads no Celery).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs import jsonsafe
from jobs.errors import BadInput, InvalidSchedule, InvalidWorkflow, PayloadTooLarge
from jobs.kinds import Registry
from jobs.schedules.policies import MISFIRE_POLICIES, OVERLAP_POLICIES, Misfire, Overlap
from jobs.schedules.timing import Cron, Every, Timing, parse_cron, parse_every, parse_zone
from jobs.settings import Settings

if TYPE_CHECKING:
    from jobs.workflows import Workflow

__all__ = [
    "DEFINITION_COLUMNS",
    "TIMING_COLUMNS",
    "ScheduleSpec",
    "checked_workflow",
    "describe_target",
    "describe_timing",
    "spec_of",
    "timing_of",
    "validate",
    "workflow_error",
    "workflow_of",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule as declared in code (``beat/declared.py``) or given on the command line.

    It fires a job of ``kind`` with ``payload`` (on ``queue``, at ``priority``), or a
    ``workflow``: a ``jobs.workflows.Workflow`` or its spec as data (the shape of a spec
    file), whose steps carry their own payloads, queues and priorities. Give ``cron``
    (5 fields or an alias like ``@daily``, read in ``timezone``) or ``every`` (seconds,
    or a duration like ``"30s"``), not both.
    """

    name: str
    kind: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: float | str | None = None
    timezone: str = "UTC"
    misfire: Misfire = "once"
    overlap: Overlap = "allow"
    queue: str | None = None
    priority: int | None = None
    enabled: bool = True
    workflow: Workflow | Mapping[str, Any] | None = None


#: The columns that say when a schedule fires; changing one starts it afresh from now.
TIMING_COLUMNS = ("cron", "every_seconds", "timezone")
DEFINITION_COLUMNS = (
    "kind",
    "payload",
    "queue",
    "priority",
    "workflow",
    *TIMING_COLUMNS,
    "misfire",
    "overlap",
)


def validate(spec: ScheduleSpec, registry: Registry, settings: Settings | None = None) -> dict[str, Any]:
    """The schedule's column values, checked; raises a ``BadInput`` naming the first problem.

    The payload is validated against the kind's model here, when the schedule
    is saved, and stored in its validated form; a workflow is checked as its
    submission would be (``jobs.workflows.check_workflow``) and stored as spec
    data. ``settings`` bounds the payloads' size (none for a kind's without it).
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
    target = _target(spec, registry, settings)
    return {
        "name": spec.name,
        **target,
        "cron": cron,
        "every_seconds": every,
        "timezone": zone.key,
        "misfire": spec.misfire,
        "overlap": spec.overlap,
        "enabled": spec.enabled,
    }


def _target(spec: ScheduleSpec, registry: Registry, settings: Settings | None) -> dict[str, Any]:
    """What the schedule fires, as its columns: a kind's job, or a workflow."""
    if (spec.kind is None) == (spec.workflow is None):
        raise InvalidSchedule(f"schedule {spec.name}: give a job kind or a workflow (one of them)")
    if spec.workflow is None:
        assert spec.kind is not None
        declared = registry.get(spec.kind)
        payload = declared.dump(declared.validate(dict(spec.payload)))
        size = len(declared.to_json(payload).encode())
        limit = settings.max_payload_bytes if settings is not None else None
        if limit is not None and size > limit:
            raise PayloadTooLarge(
                f"payload of {size} bytes is over the limit of {limit} bytes (JOBS_MAX_PAYLOAD_BYTES)"
            )
        return {
            "kind": declared.name,
            "payload": payload,
            "queue": spec.queue,
            "priority": spec.priority,
            "workflow": None,
        }
    if spec.payload or spec.queue is not None or spec.priority is not None:
        raise InvalidSchedule(
            f"schedule {spec.name}: a workflow's steps carry their own payload, queue and priority "
            "(set them in its spec, not on the schedule)"
        )
    return {
        "kind": None,
        "payload": {},
        "queue": None,
        "priority": None,
        "workflow": checked_workflow(
            spec.workflow, registry, settings if settings is not None else Settings()
        ),
    }


def checked_workflow(
    workflow: Workflow | Mapping[str, Any], registry: Registry, settings: Settings
) -> dict[str, Any]:
    """A workflow (or its spec as data) checked as its submission would be, as the spec data a
    schedule stores; ``InvalidWorkflow`` naming the workflow and the step at fault."""
    from jobs.workflows import Workflow, check_workflow, from_spec

    flow = workflow if isinstance(workflow, Workflow) else from_spec(workflow)
    try:
        data = check_workflow(flow, registry, settings)
    except BadInput as error:
        raise workflow_error(flow.name, error) from None
    problem = jsonsafe.unstorable(data, root="workflow")
    if problem is not None:
        raise InvalidWorkflow(f"workflow {flow.name!r}: {problem}")
    stored: dict[str, Any] = json.loads(json.dumps(data))  # plain JSON, as the table gives it back
    return stored


def workflow_error(name: str, error: BadInput) -> InvalidWorkflow:
    """A workflow's refusal that names the workflow (``workflow 'etl': step 'b': …``)."""
    named = error.message.startswith("workflow ")
    return InvalidWorkflow(error.message if named else f"workflow {name!r}: {error.message}")


def workflow_of(row: Any) -> Workflow:
    """The workflow a saved schedule fires; ``InvalidWorkflow`` if its spec no longer reads."""
    from jobs.workflows import from_spec

    return from_spec(row.workflow)


def describe_target(row: Any) -> str:
    """What a saved schedule fires, in a few words: ``ping``, ``workflow nightly (3 steps)``."""
    if row.workflow is None:
        return str(row.kind)
    steps = row.workflow.get("steps") if isinstance(row.workflow, Mapping) else None
    count = len(steps) if isinstance(steps, list | Mapping) else 0
    return f"workflow {row.workflow.get('name')} ({count} step{'' if count == 1 else 's'})"


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
        workflow=row.workflow,
    )
