"""Who leads: the leader holds a PostgreSQL advisory lock (``beat.leader`` takes it).

Kept in ``jobs`` so that the CLI (health checks, schedules, doctor) can ask
PostgreSQL who leads without importing the leader process.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["APPLICATION_PREFIX", "LOCK_KEY", "current_leader"]

#: The advisory lock's key: the bytes of "jobs" as an integer.
LOCK_KEY = 0x6A6F6273
#: The leader's connection's application_name starts with this, then ``:HOST:PID``.
APPLICATION_PREFIX = "jobs-leader"


def current_leader(conn: sa.Connection) -> str | None:
    """The identity of the process holding the leader lock, if any."""
    return conn.execute(
        sa.text(
            "SELECT a.application_name FROM pg_catalog.pg_locks l "
            "JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
            "AND l.classid = 0 AND l.objid = :key AND l.objsubid = 1"
        ),
        {"key": LOCK_KEY},
    ).scalar_one_or_none()
