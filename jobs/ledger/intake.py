"""New jobs into the ledger: submitted (one, in bulk, in the caller's transaction), adopted
from a foreign message, or recorded as refused; and the lookups a submission needs (the job that
holds an idempotency key, the job that fired a schedule's slot).
"""

from __future__ import annotations

import functools
import json
import operator
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import psycopg
import sqlalchemy as sa
from psycopg.types.json import set_json_dumps
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.errors import ErrorRecord
from jobs.ledger.statements import Executor, execute_text, now, param
from jobs.schema import jobs
from jobs.states import State

__all__ = [
    "NEW_JOB_COLUMNS",
    "SERVER_NOW",
    "WORKFLOW_COLUMNS",
    "ErrorRecord",
    "KeyHolder",
    "NewJob",
    "adopt",
    "copy_rows",
    "holder_of_key",
    "id_for_slot",
    "insert_one",
    "insert_rows",
    "record_refused",
]


class _ServerNow:
    def __repr__(self) -> str:
        return "ledger.SERVER_NOW"


#: A new job's ``published_at`` when it is published as it is created: PostgreSQL stamps it with
#: the transaction's ``now()``, the clock ``created_at`` takes too, never the producer's clock.
SERVER_NOW: Final = _ServerNow()

#: Columns a new job is created with (the rest take their defaults).
NEW_JOB_COLUMNS = (
    "id", "kind", "queue", "priority", "payload", "state", "max_attempts", "not_before",
    "idempotency_key", "submitted_by", "retry_of", "published_at", "limited",
)  # fmt: skip


@dataclass(slots=True)
class NewJob:
    """A job about to enter the ledger: the columns it is created with, and its payload's JSON text
    (serialized once, for COPY and for the broker's message)."""

    id: uuid.UUID
    kind: str
    queue: str
    priority: int
    payload: dict[str, Any]
    state: State
    max_attempts: int
    payload_json: str = ""
    """``json.dumps(payload)``, filled in when not given."""
    not_before: datetime | None = None
    idempotency_key: str | None = None
    submitted_by: str | None = None
    retry_of: uuid.UUID | None = None
    published_at: datetime | _ServerNow | None = None
    """``SERVER_NOW`` when it is published as it is created."""
    schedule_name: str | None = None
    schedule_slot: datetime | None = None
    limited: bool = False
    """Under a limit: created ``held`` (``scheduled`` when delayed), given its slot rows with it."""
    unique_key: str | None = None
    """Its content key when its kind has a unique window (docs/flow-control.md)."""
    debounce_key: str | None = None
    """Its content key when its kind debounces."""
    workflow_id: uuid.UUID | None = None
    """The workflow it is a step of (docs/workflows.md), with ``step``, ``pending`` (its parents
    not finished yet: it is created ``held`` while any is left) and ``inputs`` (the fields of its
    payload it takes from its parents' results)."""
    step: str | None = None
    pending: int = 0
    inputs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.payload_json:
            self.payload_json = json.dumps(self.payload, separators=(",", ":"))

    def columns(self) -> dict[str, Any]:
        """The row's columns (not the payload's text): what ``insert_rows`` inserts."""
        found = {name: getattr(self, name) for name in NEW_JOB_COLUMNS}
        if self.schedule_name is not None:
            found.update(schedule_name=self.schedule_name, schedule_slot=self.schedule_slot)
        # Like a schedule's pair, only when set: the bulk path (COPY) never carries them, since
        # submit_many refuses kinds with a unique window or a debounce.
        if self.unique_key is not None:
            found["unique_key"] = self.unique_key
        if self.debounce_key is not None:
            found["debounce_key"] = self.debounce_key
        return found


def adopt(conn: sa.Connection, job: NewJob, *, handed_back: bool = False, held: bool = False) -> bool:
    """Record a foreign message (a plain Celery ``send_task``) as a queued job; ``False`` if a job
    with its id exists already (the message was a copy).

    ``handed_back``: the worker that got it lacks the kind; the relay publishes the job again once
    a live worker implements it (its payload is checked by the worker that runs it). ``held``: the
    kind is under a limit; the job waits for admission (``jobs.ledger.admission``).
    """
    values = job.columns()
    values.update(
        state="held" if held else "queued", limited=held, published_at=None if handed_back or held else now()
    )
    if handed_back:
        values["handed_back_at"] = now()
    inserted = conn.execute(
        pg_insert(jobs).values(values).on_conflict_do_nothing(index_elements=[jobs.c.id]).returning(jobs.c.id)
    ).first()
    return inserted is not None


def record_refused(conn: sa.Connection, job: NewJob, error: ErrorRecord) -> bool:
    """A message from outside that cannot run is recorded as ``failed`` with the reason, attempt 0;
    ``False`` if a row with its id exists already (the message was a copy)."""
    values = job.columns()
    values.update(state="failed", error=error, finished_at=now())
    inserted = conn.execute(
        pg_insert(jobs).values(values).on_conflict_do_nothing(index_elements=[jobs.c.id]).returning(jobs.c.id)
    ).first()
    return inserted is not None


def insert_rows(
    conn: sa.Connection, rows: Sequence[dict[str, Any]], *, idempotent: bool, scheduled: bool = False
) -> list[uuid.UUID]:
    """Insert new jobs; with ``idempotent`` an existing key wins and its row is skipped.

    With ``scheduled`` the rows are schedule firings: an existing job for the
    same (schedule, slot) wins, so no slot is ever fired twice. A row whose
    ``published_at`` is ``SERVER_NOW`` gets the statement's ``now()``.
    """
    # One constant statement executed with many parameter sets: compiled once and cached,
    # sent as multi-row INSERTs ("insertmanyvalues"), ids returned in the rows' order.
    stmt = _on_conflict(pg_insert(jobs), idempotent=idempotent, scheduled=scheduled)
    params = [{key: value for key, value in row.items() if key in jobs.c} for row in rows]
    if any(row.get("published_at") is SERVER_NOW for row in rows):
        # now() is evaluated by PostgreSQL in the INSERT itself: the same instant as created_at's
        # default, in one round trip (a SELECT now() first would be a second one).
        stmt = stmt.values(published_at=sa.case((param("w_stamp", sa.Boolean), now()), else_=_PUBLISHED_AT))
        for values in params:
            published_at = values.pop("published_at", None)
            values["w_stamp"] = published_at is SERVER_NOW
            values["w_published_at"] = None if published_at is SERVER_NOW else published_at
    return list(conn.execute(stmt.returning(jobs.c.id, sort_by_parameter_order=True), params).scalars())


_PUBLISHED_AT = param("w_published_at", sa.DateTime(timezone=True))


def _on_conflict(stmt: pg.Insert, *, idempotent: bool, scheduled: bool) -> pg.Insert:
    """An existing idempotency key, or an existing job for the same (schedule, slot), wins."""
    if idempotent and scheduled:
        return stmt.on_conflict_do_nothing()
    if idempotent:
        return stmt.on_conflict_do_nothing(
            index_elements=[jobs.c.idempotency_key], index_where=sa.text("idempotency_key IS NOT NULL")
        )
    if scheduled:
        return stmt.on_conflict_do_nothing(
            index_elements=[jobs.c.schedule_name, jobs.c.schedule_slot],
            index_where=sa.text("schedule_name IS NOT NULL"),
        )
    return stmt


#: What ``insert_one`` sends for every job (NULL where the job has none).
_ONE_JOB_COLUMNS = (*NEW_JOB_COLUMNS, "schedule_name", "schedule_slot", "unique_key", "debounce_key")


@functools.cache
def _insert_one_statement(*, idempotent: bool, scheduled: bool) -> sa.Insert:
    values: dict[str, Any] = {name: param(f"w_{name}", jobs.c[name].type) for name in _ONE_JOB_COLUMNS}
    # The payload's JSON text as the submission serialized it (for the message too), cast by
    # PostgreSQL: no second json.dumps of the payload.
    values["payload"] = sa.cast(param("w_payload", sa.Text), pg.JSONB)
    values["published_at"] = sa.case((param("w_stamp", sa.Boolean), now()), else_=_PUBLISHED_AT)
    stmt = _on_conflict(pg_insert(jobs).values(values), idempotent=idempotent, scheduled=scheduled)
    return stmt.returning(jobs.c.id)


def insert_one(conn: Executor, job: NewJob, *, idempotent: bool) -> bool:
    """Insert one new job: the single submit's statement. ``False`` when an existing job wins (it
    holds the idempotency key, with ``idempotent``, or the same schedule slot).

    One constant statement per conflict rule, compiled once and sent as text
    (``execute_text``): about half the CPU of ``insert_rows`` for one row.
    """
    values = {f"w_{name}": getattr(job, name) for name in _ONE_JOB_COLUMNS}
    values["w_payload"] = job.payload_json
    values["w_stamp"] = job.published_at is SERVER_NOW
    if job.published_at is SERVER_NOW:
        values["w_published_at"] = None
    statement = _insert_one_statement(idempotent=idempotent, scheduled=job.schedule_name is not None)
    return execute_text(conn, statement, values) is not None


def copy_rows(conn: sa.Connection, new_jobs: Iterable[NewJob], *, steps: bool = False) -> None:
    """Insert many new jobs with COPY: the bulk path (no conflicts possible: fresh ids, no keys).

    Call it in a transaction: a row whose ``published_at`` is ``SERVER_NOW``
    gets the transaction's ``now()``, which is also every row's ``created_at``.
    The statement names only constant column names, so it is spelled out here; SQLAlchemy
    has no COPY construct. ``steps``: the jobs are a workflow's steps (``WORKFLOW_COLUMNS`` too).
    """
    # COPY evaluates no expression, so the transaction's timestamp is read once, before it starts.
    stamp = conn.execute(sa.select(now())).scalar_one()
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    names = NEW_JOB_COLUMNS + WORKFLOW_COLUMNS if steps else NEW_JOB_COLUMNS
    columns = ", ".join(names)
    # Binary COPY: psycopg's C dumpers write each value (a third of the text format's cost) and
    # nothing needs escaping. The JSON columns take the JSON text already made (serialized once).
    with raw.cursor() as cursor:
        set_json_dumps(_json_as_is, cursor)
        with cursor.copy(f"COPY jobs ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_COPY_TYPES + _STEP_TYPES if steps else _COPY_TYPES)
            for job in new_jobs:
                if job.published_at is SERVER_NOW:
                    job.published_at = stamp
                if steps:
                    inputs = None if job.inputs is None else json.dumps(job.inputs, separators=(",", ":"))
                    copy.write_row((*_copy_values(job), job.workflow_id, job.step, job.pending, inputs))
                else:
                    copy.write_row(_copy_values(job))


def _json_as_is(text: str) -> str:
    return text


# The types of NEW_JOB_COLUMNS, as the table declares them (binary COPY sends no casts).
_COPY_TYPES = [
    "uuid", "text", "text", "int2", "jsonb", "text", "int4", "timestamptz",
    "text", "text", "uuid", "timestamptz", "bool",
]  # fmt: skip
#: A workflow step's columns, after ``NEW_JOB_COLUMNS`` (``copy_rows(steps=True)``).
WORKFLOW_COLUMNS = ("workflow_id", "step", "pending", "inputs")
_STEP_TYPES = ["uuid", "text", "int4", "jsonb"]
_copy_values = cast(
    "Callable[[NewJob], tuple[Any, ...]]",
    operator.attrgetter(*("payload_json" if column == "payload" else column for column in NEW_JOB_COLUMNS)),
)


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """The job holding an idempotency key, as compared with a new submission."""

    id: uuid.UUID
    kind: str
    same_payload: bool  # the stored payload equals the new one, as JSONB compares (key order aside)


def holder_of_key(conn: sa.Connection, key: str, payload_json: str) -> KeyHolder | None:
    """The job that holds an idempotency key, if any, and whether its payload is ``payload_json``."""
    same = jobs.c.payload == sa.cast(sa.bindparam("payload_json", payload_json, type_=sa.Text), pg.JSONB)
    row = conn.execute(
        sa.select(jobs.c.id, jobs.c.kind, same.label("same")).where(jobs.c.idempotency_key == key)
    ).first()
    return None if row is None else KeyHolder(row.id, row.kind, bool(row.same))


def id_for_slot(conn: sa.Connection, schedule: str, slot: datetime) -> uuid.UUID | None:
    """The job that fired a schedule's slot, if any."""
    return conn.execute(
        sa.select(jobs.c.id).where(jobs.c.schedule_name == schedule, jobs.c.schedule_slot == slot)
    ).scalar_one_or_none()
