"""Limits for tests: set one as an operator would (``set_limit``); limited jobs made by hand.

Admission (``jobs.ledger.admission``) makes these rows in production; these helpers write a job
and its ``limit_slots`` row straight into the ledger, so a test can set up any usage it needs
(tests only: no module of the platform writes ``limit_slots`` outside the ledger).
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from jobs import db, ledger, limit_store
from jobs.limits import Limit
from jobs.schema import jobs, limit_keys, limit_slots
from jobs.settings import Settings


def ago(seconds: float) -> Any:
    return sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def limited_job(
    settings: Settings,
    limit: str,
    key: str = "",
    *,
    state: str = "held",
    kind: str = "test.work",
    waited: float = 60.0,
    started: float | None = None,
    admitted: float | None = None,
    payload: dict[str, Any] | None = None,
) -> uuid.UUID:
    """A job of ``kind`` in ``state`` with a slot for ``limit`` and ``key``: waiting since
    ``waited`` seconds ago, admitted ``admitted`` seconds ago (None: still waiting), started
    ``started`` seconds ago (None: not started)."""
    job_id = uuid.uuid4()
    with db.transaction(settings) as conn:
        ledger.insert_rows(
            conn,
            [
                {
                    "id": job_id,
                    "kind": kind,
                    "queue": "default",
                    "priority": 5,
                    "payload": payload if payload is not None else {"key": key or "k"},
                    "state": state,
                    "max_attempts": 3,
                }
            ],
            idempotent=False,
        )
        values: dict[str, Any] = {"limited": True}
        if started is not None:
            values["started_at"] = ago(started)
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
        conn.execute(
            sa.insert(limit_slots).values(
                job_id=job_id,
                limit_name=limit,
                key=key,
                waiting_since=ago(waited),
                admitted_at=None if admitted is None else ago(admitted),
            )
        )
    return job_id


def rate_state(
    settings: Settings, limit: str, key: str = "", *, tat_in: float, last_ago: float = 0.0
) -> None:
    """A rate limit's GCRA state for a key: ``tat`` ``tat_in`` seconds from now."""
    with db.transaction(settings) as conn:
        conn.execute(
            sa.insert(limit_keys).values(
                limit_name=limit, key=key, tat=ago(-tat_in), last_admitted_at=ago(last_ago)
            )
        )


def set_limit(settings: Settings, limit: Limit) -> None:
    """Create or change ``limit`` as ``jobs limits set`` does (without its admission pass); this
    process sees it at once."""
    with db.transaction(settings) as conn:
        limit_store.put(conn, limit, by="tests", retarget=True)
    ledger.forget_targets()


def remove_limits(settings: Settings, *names: str) -> None:
    """Remove these limits from the ledger (their jobs' slots go with them); this process sees it
    at once."""
    with db.transaction(settings) as conn:
        for name in names:
            limit_store.remove(conn, name)
    ledger.forget_targets()
