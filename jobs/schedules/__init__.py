"""Schedules: what fires when, checked once when saved, and the slot arithmetic.

A schedule fires a job of one kind, with one payload, or one workflow, at each
of its *slots*: the instants its cron expression names in its time zone, or
the multiples of its fixed interval counted from the Unix epoch. The leader
(``beat.cron``) fires a slot by inserting a job (or a workflow) whose
(schedule, slot) pair is unique in the ledger, so a slot never fires twice,
even with two leaders at once.
``docs/scheduling.md`` explains it all for operators.

One concept per module:

- ``timing``: time zones, cron expressions, ``Cron`` and ``Every`` timings and
  their slots, daylight-saving rules included (pure);
- ``policies``: which due slots fire, by the misfire (``plan``) and overlap
  (``overlap``) policies (pure);
- ``spec``: ``ScheduleSpec`` and its validation into the table's columns (a
  workflow checked as its submission would be);
- ``display``: ``ScheduleView``, a schedule as the CLI shows it (pure);
- ``firings``: the jobs and workflows a schedule fires, and reading them back from the ledger;
- ``store``: every statement on the ``schedules`` table, the CLI's and the leader's.

The names below are re-exported here; ``InvalidSchedule``, ``ScheduleNotFound``
and ``ScheduleConflict`` live in ``jobs.errors``.
"""

from __future__ import annotations

from jobs.errors import InvalidSchedule, ScheduleConflict, ScheduleNotFound
from jobs.schedules import store
from jobs.schedules.display import LastJob, ScheduleView, view
from jobs.schedules.firings import (
    MANUAL,
    Firing,
    busy_firing,
    fire,
    fired_by,
    is_manual,
    recent_firings,
    workflow_states,
)
from jobs.schedules.policies import MISFIRE_POLICIES, OVERLAP_POLICIES, Misfire, Overlap, Plan, overlap, plan
from jobs.schedules.spec import (
    DEFINITION_COLUMNS,
    TIMING_COLUMNS,
    ScheduleSpec,
    checked_workflow,
    describe_target,
    describe_timing,
    spec_of,
    timing_of,
    validate,
    workflow_of,
)
from jobs.schedules.store import (
    FiringRound,
    add,
    edit,
    get,
    list_schedules,
    remove,
    set_enabled,
    sync_declared,
    trigger,
)
from jobs.schedules.timing import (
    ALIASES,
    Cron,
    Every,
    Timing,
    count_slots,
    latest_slot,
    parse_cron,
    parse_every,
    parse_zone,
    slots_between,
    upcoming,
)

__all__ = [
    "ALIASES",
    "DEFINITION_COLUMNS",
    "MANUAL",
    "MISFIRE_POLICIES",
    "OVERLAP_POLICIES",
    "TIMING_COLUMNS",
    "Cron",
    "Every",
    "Firing",
    "FiringRound",
    "InvalidSchedule",
    "LastJob",
    "Misfire",
    "Overlap",
    "Plan",
    "ScheduleConflict",
    "ScheduleNotFound",
    "ScheduleSpec",
    "ScheduleView",
    "Timing",
    "add",
    "busy_firing",
    "checked_workflow",
    "count_slots",
    "describe_target",
    "describe_timing",
    "edit",
    "fire",
    "fired_by",
    "get",
    "is_manual",
    "latest_slot",
    "list_schedules",
    "overlap",
    "parse_cron",
    "parse_every",
    "parse_zone",
    "plan",
    "recent_firings",
    "remove",
    "set_enabled",
    "slots_between",
    "spec_of",
    "store",
    "sync_declared",
    "timing_of",
    "trigger",
    "upcoming",
    "validate",
    "view",
    "workflow_of",
    "workflow_states",
]
