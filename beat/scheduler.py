"""The leader process as a Celery beat scheduler: ``celery -A beat beat``.

Every tick it makes sure it holds the leader lock; only the leader runs the
maintenance loops. A standby ticks too, trying for the lock, so it takes over
within one tick of the leader's death.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import beat

from beat.leader import Leadership
from beat.maintenance import Maintenance, Runner, default_loops
from jobs.kinds import load_kinds
from jobs.settings import get_settings

__all__ = ["LeaderScheduler"]

log = logging.getLogger("jobs.beat")


class LeaderScheduler(beat.Scheduler):
    """Celery's beat loop driving the leader election and the maintenance loops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.settings = get_settings()
        self.leadership = Leadership(self.settings)
        super().__init__(*args, **kwargs)
        self.runner = Runner(
            Maintenance(self.settings, self.app, load_kinds(self.settings.kind_modules)),
            default_loops(self.settings),
        )

    def setup_schedule(self) -> None:
        """Schedules come from the ledger, not from Celery's in-memory table."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.leadership.ensure():
            return self.settings.leader_tick
        return min(self.runner.tick(), self.settings.leader_tick)

    def close(self) -> None:
        self.leadership.release()
        super().close()

    @property
    def info(self) -> str:
        return f"leader election on PostgreSQL as {self.leadership.identity}"
