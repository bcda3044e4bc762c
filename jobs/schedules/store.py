"""The ``schedules`` table's one owner: every statement that reads or writes it.

The CLI's side adds, reads, changes, pauses, triggers and removes schedules;
the leader's side (``beat.cron``) reads the enabled ones each tick, locks one
to fire it and records what the round did (``read_enabled``, ``lock_enabled``,
``record_round``), and syncs the schedules declared in code
(``sync_declared``). No other module builds a statement against the table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs import db
from jobs.errors import BadInput, InvalidSchedule, ScheduleConflict, ScheduleNotFound
from jobs.kinds import Registry
from jobs.schedules.display import ScheduleView
from jobs.schedules.firings import fire, fired_by, workflow_states
from jobs.schedules.spec import DEFINITION_COLUMNS, TIMING_COLUMNS, ScheduleSpec, spec_of, validate
from jobs.schema import jobs, schedules
from jobs.settings import Settings

if TYPE_CHECKING:
    from jobs.producer import JobId, Producer
    from jobs.workflows import WorkflowId

__all__ = [
    "FiringRound",
    "add",
    "edit",
    "get",
    "list_schedules",
    "lock_enabled",
    "read_enabled",
    "record_round",
    "remove",
    "set_enabled",
    "sync_declared",
    "trigger",
]

log = logging.getLogger("jobs.schedules")


def _db_now(conn: sa.Connection) -> datetime:
    return conn.execute(sa.select(sa.func.now())).scalar_one()


def _locked(conn: sa.Connection, name: str) -> Any:
    row = conn.execute(sa.select(schedules).where(schedules.c.name == name).with_for_update()).first()
    if row is None:
        raise ScheduleNotFound(f"no schedule named {name!r} (see jobs schedule list)")
    return row


def _declared_in_code(name: str, action: str) -> ScheduleConflict:
    return ScheduleConflict(
        f"schedule {name!r} is declared in code (beat/declared.py): {action} it there; "
        f"the CLI can only pause, resume and trigger it"
    )


# ---------------------------------------------------------------------------------------------------------
# The CLI's side


def add(settings: Settings, registry: Registry, spec: ScheduleSpec, *, by: str) -> ScheduleView:
    """Save a new schedule; it fires from its first slot after now."""
    values = validate(spec, registry, settings)
    with db.transaction(settings) as conn:
        inserted = conn.execute(
            pg_insert(schedules)
            .values(**values, updated_by=by)
            .on_conflict_do_nothing(index_elements=[schedules.c.name])
            .returning(schedules.c.name)
        ).first()
        if inserted is None:
            raise ScheduleConflict(
                f"schedule {spec.name!r} already exists (change it with jobs schedule edit {spec.name})"
            )
    return get(settings, spec.name)


def get(settings: Settings, name: str, *, count: int = 3) -> ScheduleView:
    """One schedule, with its next ``count`` slots."""
    with db.transaction(settings) as conn:
        views = _views(conn, schedules.c.name == name, count)
    if not views:
        raise ScheduleNotFound(f"no schedule named {name!r} (see jobs schedule list)")
    return views[0]


def list_schedules(settings: Settings) -> list[ScheduleView]:
    """Every schedule, by name, with its next three slots."""
    with db.transaction(settings) as conn:
        return _views(conn, sa.true(), 3)


def _views(conn: sa.Connection, where: sa.ColumnElement[bool], count: int) -> list[ScheduleView]:
    """The schedules ``where`` selects, with their last job's state or last workflow's."""
    query = (
        sa.select(schedules, jobs.c.state.label("last_job_state"))
        .outerjoin(jobs, jobs.c.id == schedules.c.last_job_id)
        .where(where)
        .order_by(schedules.c.name)
    )
    rows = list(conn.execute(query).all())
    states = workflow_states(conn, (row.last_workflow_id for row in rows if row.last_workflow_id))
    now = _db_now(conn)
    return [
        ScheduleView.from_row(row, now, count=count, workflow_state=states.get(row.last_workflow_id))
        for row in rows
    ]


def edit(settings: Settings, registry: Registry, name: str, *, by: str, **changes: Any) -> ScheduleView:
    """Change a schedule made with the CLI; changing when it fires starts it afresh from now.

    ``changes`` are ``ScheduleSpec`` fields; ``params`` merges fields into the
    current payload (``payload`` replaces it). Giving ``cron`` clears the
    interval and the other way round; giving ``kind`` makes it fire that kind's
    jobs instead of its workflow, giving ``workflow`` that workflow instead of
    its jobs (or its former workflow).
    """
    with db.transaction(settings) as conn:
        row = _locked(conn, name)
        if row.declared:
            raise _declared_in_code(name, "change")
        params = changes.pop("params", None)
        updates = {key: value for key, value in changes.items() if value is not None}
        if "cron" in updates and "every" in updates:
            raise InvalidSchedule("give a cron expression or an interval, not both")
        if "cron" in updates:
            updates["every"] = None
        elif "every" in updates:
            updates["cron"] = None
        if "kind" in updates and "workflow" in updates:
            raise InvalidSchedule("give a job kind or a workflow, not both")
        if "kind" in updates:
            updates["workflow"] = None
        elif "workflow" in updates:  # the kind's payload and options go with it
            for key, empty in (("kind", None), ("payload", {}), ("queue", None), ("priority", None)):
                updates.setdefault(key, empty)
        spec = dataclasses.replace(spec_of(row), **updates)
        if params:
            spec = dataclasses.replace(spec, payload={**spec.payload, **params})
        values = validate(spec, registry, settings)
        changed = {key: values[key] for key in DEFINITION_COLUMNS if values[key] != getattr(row, key)}
        if changed:
            extra: dict[str, Any] = {"updated_at": sa.func.now(), "updated_by": by}
            if set(changed) & set(TIMING_COLUMNS):
                extra["handled_until"] = sa.func.now()
            conn.execute(sa.update(schedules).where(schedules.c.name == name).values(**changed, **extra))
    return get(settings, name)


def set_enabled(settings: Settings, name: str, enabled: bool, *, by: str) -> tuple[ScheduleView, bool]:
    """Pause or resume; ``(schedule, changed)``. Resuming fires from the next slot, not the paused ones."""
    with db.transaction(settings) as conn:
        row = _locked(conn, name)
        changed = row.enabled != enabled
        if changed:
            values: dict[str, Any] = {"enabled": enabled, "updated_at": sa.func.now(), "updated_by": by}
            if enabled:
                values["handled_until"] = sa.func.now()
            conn.execute(sa.update(schedules).where(schedules.c.name == name).values(**values))
    return get(settings, name), changed


def remove(settings: Settings, name: str) -> ScheduleView:
    """Delete a schedule made with the CLI; the jobs it fired stay in the ledger."""
    shown = get(settings, name)
    with db.transaction(settings) as conn:
        row = _locked(conn, name)
        if row.declared:
            raise _declared_in_code(name, "remove")
        conn.execute(sa.delete(schedules).where(schedules.c.name == name))
    return shown


def trigger(producer: Producer, name: str, *, by: str) -> tuple[JobId | WorkflowId, datetime]:
    """Fire a schedule now, once, marked as manual (even when paused; the overlap policy is not
    applied); returns its job, or its workflow, and the slot (now)."""
    settings = producer.settings
    with db.ledger_errors(settings.database_url), db.session(settings) as session, session.begin():
        conn = session.connection()
        row = _locked(conn, name)
        slot = cast(datetime, conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one())
        job = fire(producer, session, row, slot, submitted_by=fired_by(name, manual_by=by))
        conn.execute(
            sa.update(schedules)
            .where(schedules.c.name == name)
            .values(last_fired_at=sa.func.now(), **_last_firing(job))
        )
    what = "workflow" if row.workflow is not None else "job"
    log.info("schedule %s fired by hand (%s) as %s %s", name, by, what, job)
    return job, slot


def _last_firing(fired: JobId | WorkflowId) -> dict[str, Any]:
    """The columns naming a schedule's last firing: its job's id or its workflow's (one is NULL)."""
    from jobs.workflows import WorkflowId

    if isinstance(fired, WorkflowId):
        return {"last_workflow_id": fired, "last_job_id": None}
    return {"last_job_id": fired, "last_workflow_id": None}


# ---------------------------------------------------------------------------------------------------------
# The leader's side (``beat.cron``)


def read_enabled(conn: sa.Connection) -> tuple[datetime, list[Any]]:
    """The database's now and the enabled schedules' rows, by name: what a leader tick starts from."""
    now = _db_now(conn)
    rows = conn.execute(sa.select(schedules).where(schedules.c.enabled).order_by(schedules.c.name)).all()
    return now, list(rows)


def lock_enabled(conn: sa.Connection, name: str) -> Any | None:
    """The schedule's row, locked until the transaction ends; ``None`` if it was paused or removed."""
    return conn.execute(
        sa.select(schedules).where(schedules.c.name == name, schedules.c.enabled).with_for_update()
    ).first()


@dataclass(frozen=True, slots=True)
class FiringRound:
    """What one round of firing did to a schedule, as ``record_round`` saves it."""

    #: Slots at or before it were fired or passed over (the saved one only moves forward).
    handled_until: datetime
    #: The newest slot fired in the round, and its job or workflow; clears ``last_error`` unless
    #: ``error`` is set.
    fired: tuple[datetime, JobId | WorkflowId] | None = None
    #: Why a slot could not fire (the round stopped there).
    error: str | None = None
    #: Why slots were passed over by the misfire or overlap policy, and how many.
    skip_reason: str | None = None
    skipped: int = 0


def record_round(conn: sa.Connection, name: str, done: FiringRound) -> None:
    """Save a firing round on the schedule's row, in the transaction that fired its jobs."""
    values: dict[str, Any] = {
        "handled_until": sa.func.greatest(schedules.c.handled_until, done.handled_until)
    }
    if done.error is not None:
        values.update(last_error=done.error, last_error_at=sa.func.now())
    if done.fired is not None:
        slot, job = done.fired
        values.update(last_slot=slot, last_fired_at=sa.func.now(), **_last_firing(job))
        if done.error is None:
            values.update(last_error=None, last_error_at=None)
    if done.skip_reason is not None:
        values.update(last_skip_at=sa.func.now(), last_skip_reason=done.skip_reason)
        values.update(skipped=schedules.c.skipped + done.skipped)
    conn.execute(sa.update(schedules).where(schedules.c.name == name).values(**values))


def sync_declared(settings: Settings, registry: Registry, declared: Sequence[ScheduleSpec]) -> list[str]:
    """Make the table hold the schedules declared in code; returns what changed, one line each.

    A declared schedule's definition comes from code; whether it is paused is
    the operators' (kept across syncs). A declared schedule no longer in the
    list is deleted. An invalid declaration is logged and left out.
    """
    checked: list[dict[str, Any]] = []
    for spec in declared:
        try:
            checked.append(validate(spec, registry, settings))
        except BadInput as error:
            log.error("declared schedule %r is invalid and was not synced: %s", spec.name, error.message)
    names = {spec.name for spec in declared}
    report: list[str] = []
    with db.transaction(settings) as conn:
        existing = {row.name: row for row in conn.execute(sa.select(schedules).with_for_update()).all()}
        for values in checked:
            name = values["name"]
            old = existing.get(name)
            if old is None:
                conn.execute(sa.insert(schedules).values(**values, declared=True, updated_by="code"))
                report.append(f"added declared schedule {name}")
                continue
            changed = {key: values[key] for key in DEFINITION_COLUMNS if values[key] != getattr(old, key)}
            if not changed and old.declared:
                continue
            extra: dict[str, Any] = {"declared": True, "updated_at": sa.func.now(), "updated_by": "code"}
            if set(changed) & set(TIMING_COLUMNS):
                extra["handled_until"] = sa.func.now()
            conn.execute(sa.update(schedules).where(schedules.c.name == name).values(**changed, **extra))
            note = "" if old.declared else " (it was made with the CLI; code owns it now)"
            report.append(f"updated declared schedule {name}{note}")
        for name, row in existing.items():
            if row.declared and name not in names:
                conn.execute(sa.delete(schedules).where(schedules.c.name == name))
                report.append(f"removed declared schedule {name} (no longer declared in code)")
    for line in report:
        log.info("%s", line)
    return report
