"""When each of the leader's maintenance loops last ran: the ``maintenance_runs`` table's one owner.

The leader's runner (``beat.maintenance.Runner``) records each loop's last run
and result here; ``jobs schedule list`` reads them back. Kept in ``jobs``, like
``jobs.leader``, so that the CLI reads them without importing the leader process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs import db
from jobs.schema import maintenance_runs
from jobs.settings import Settings

__all__ = ["last_runs", "record"]


def record(conn: sa.Connection, runs: Sequence[dict[str, Any]]) -> None:
    """Upsert each loop's last run into ``maintenance_runs``."""
    stmt = pg_insert(maintenance_runs).values(list(runs))
    columns = ("interval_seconds", "last_run_at", "last_result", "last_error", "leader")
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[maintenance_runs.c.name],
            set_={column: stmt.excluded[column] for column in columns},
        )
    )


def last_runs(settings: Settings) -> list[dict[str, Any]]:
    """When each of the leader's maintenance loops last ran, as recorded by the leader, by name."""
    with db.transaction(settings) as conn:
        rows = conn.execute(sa.select(maintenance_runs).order_by(maintenance_runs.c.name)).all()
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
    return [
        {
            "name": row.name,
            "interval_seconds": row.interval_seconds,
            "last_run_at": row.last_run_at,
            "seconds_ago": max(0.0, (now - row.last_run_at).total_seconds()),
            "last_result": row.last_result,
            "last_error": row.last_error,
            "leader": row.leader,
        }
        for row in rows
    ]
