"""When a submission is a duplicate: the job the ledger holds already for its idempotency key, its
schedule's slot, its kind's unique window or its debounce.

``insert_or_existing`` is the insert of every single submit: one statement
when the job is new. ``collapse_or_insert`` is the insert of a kind with a
unique window or a debounce, inside a transaction: the lock on the content key
first, then the job the submission collapses into, else the insert. What the
two flow-control mechanisms mean: docs/flow-control.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection

from jobs import ledger
from jobs.errors import IdempotencyConflict
from jobs.kinds import Kind

__all__ = ["Existing", "Reason", "collapse_or_insert", "insert_or_existing"]

#: Why a submission returned a job that was there already.
Reason = Literal["idempotency", "schedule", "unique", "debounce"]


@dataclass(frozen=True, slots=True)
class Existing:
    """The job a submission collapsed into, and why."""

    id: uuid.UUID
    reason: Reason


def collapse_or_insert(conn: Connection, kind: Kind, row: ledger.NewJob, key: str | None) -> Existing | None:
    """Insert a job of a kind with a unique window or a debounce, unless it collapses into another.

    Call it in a transaction (the lock on the content key is held until it
    ends). An idempotency key is honoured first: its job is returned whatever
    the window says. A debounced submission that finds its job still
    ``scheduled`` gives it its payload and pushes it back (the key, if any,
    stays unbound); otherwise the new job is due ``period`` seconds from now on
    the server's clock. A replay (``retry_of``) runs again on purpose: it is
    never collapsed, and carries its keys for the submissions after it.
    """
    if row.retry_of is not None:
        return insert_or_existing(conn, row, key)
    if row.unique_key is not None and kind.unique is not None:
        ledger.lock_content(conn, "unique", row.unique_key)
        bound = _bound(conn, row, key)
        if bound is not None:
            return bound
        holder = ledger.unique_holder(conn, row.kind, row.unique_key, kind.unique.period)
        if holder is not None:
            return Existing(holder, "unique")
    elif row.debounce_key is not None and kind.debounce is not None:
        ledger.lock_content(conn, "debounce", row.debounce_key)
        bound = _bound(conn, row, key)
        if bound is not None:
            return bound
        period = kind.debounce.period
        pushed = ledger.push_debounced(conn, row.kind, row.debounce_key, row.payload_json, period)
        if pushed.id is not None:
            return Existing(pushed.id, "debounce")
        row.not_before = pushed.due
    return insert_or_existing(conn, row, key)


def _bound(conn: Connection, row: ledger.NewJob, key: str | None) -> Existing | None:
    holder = ledger.holder_of_key(conn, key, row.payload_json) if key is not None else None
    if holder is None:
        return None
    _check_same(holder, row, key)
    return Existing(holder.id, "idempotency")


# A key's holder can vanish between the conflicting INSERT and the look-up (the leader pruned it,
# or an operator deleted it): the INSERT is then tried again, a bounded number of times.
_KEY_RACE_TRIES = 3


def insert_or_existing(conn: Connection, row: ledger.NewJob, key: str | None) -> Existing | None:
    """Insert one new job; ``None`` when inserted, else the existing job that holds its key or slot.

    The existing job must have the same kind and payload as ``row``: if not,
    ``IdempotencyConflict`` names it and what differs.
    """
    for _ in range(_KEY_RACE_TRIES):
        if ledger.insert_one(conn, row, idempotent=key is not None):
            return None
        holder = ledger.holder_of_key(conn, key, row.payload_json) if key is not None else None
        if holder is not None:
            _check_same(holder, row, key)
            return Existing(holder.id, "idempotency")
        if row.schedule_name is not None and row.schedule_slot is not None:
            existing = ledger.id_for_slot(conn, row.schedule_name, row.schedule_slot)
            if existing is not None:
                return Existing(existing, "schedule")
    raise AssertionError(f"job {row.id} was neither inserted nor found after {_KEY_RACE_TRIES} tries")


def _check_same(holder: ledger.KeyHolder, row: ledger.NewJob, key: str | None) -> None:
    if holder.kind != row.kind:
        raise IdempotencyConflict(
            f"the idempotency key {key!r} is already bound to job {holder.id} of kind {holder.kind!r}, "
            f"not {row.kind!r}: use another key for another job"
        )
    if not holder.same_payload:
        raise IdempotencyConflict(
            f"the idempotency key {key!r} is already bound to job {holder.id}, whose payload differs "
            "from this one: use another key for another job"
        )
