"""Leader election: a PostgreSQL advisory lock held on a dedicated connection.

Whoever holds the lock leads; the others try again every tick. When the
leader's process dies its connection closes and PostgreSQL releases the lock,
so a standby takes over within one tick. The connection's
``application_name`` names the leader, so anyone can see who leads by asking
PostgreSQL (``jobs.leader.current_leader``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from jobs.leader import APPLICATION_PREFIX, LOCK_KEY, current_leader
from jobs.settings import Settings

__all__ = ["LOCK_KEY", "Leadership", "current_leader"]

log = logging.getLogger("jobs.beat")


class Leadership:
    """Holds (or waits for) the leader lock on its own connection."""

    def __init__(self, settings: Settings) -> None:
        self.identity = f"{APPLICATION_PREFIX}:{socket.gethostname()}:{os.getpid()}"
        self._engine = sa.create_engine(
            settings.database_url,
            poolclass=sa.pool.NullPool,
            connect_args={"connect_timeout": 5, "application_name": self.identity},
        )
        self._conn: sa.Connection | None = None
        self._released = False

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    def ensure(self) -> bool:
        """Check that we still lead, or try to become leader; never raises for a lost database."""
        if self._released:
            return False
        try:
            if self._conn is not None:
                self._conn.execute(sa.text("SELECT 1"))
                return True
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(LOCK_KEY))).scalar()
            if got:
                self._conn = conn
                log.info("%s is now the leader", self.identity)
                return True
            conn.close()
            return False
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
            if self._conn is not None:
                log.error("lost the leader lock: the database connection failed (%s)", error.orig)
            self._drop()
            return False

    def release(self) -> None:
        """Give the lock up (on shutdown), so a standby takes over at once; never lead again."""
        self._released = True
        if self._conn is not None:
            with contextlib.suppress(sa_exc.DBAPIError):
                self._conn.execute(sa.select(sa.func.pg_advisory_unlock(LOCK_KEY)))
            log.info("%s stepped down", self.identity)
        self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except sa_exc.DBAPIError:
                pass
        self._conn = None
