"""The leader process as a Celery beat scheduler: ``celery -A beat beat``.

Every tick it makes sure it holds the leader lock; only the leader runs the
maintenance loops (the cron loop among them). A standby tries for the lock
every ``standby_interval`` (at most half of ``JOBS_LEADER_TAKEOVER``), so it
takes over within that bound of the leader's death.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import beat, platforms

from beat.context import Maintenance
from beat.leader import Leadership
from beat.maintenance import default_loops
from beat.runner import Runner
from jobs.catalog import load_kinds
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
            identity=self.leadership.identity,
        )

    @property
    def standby_interval(self) -> float:
        """How often a standby tries for the lock: often enough to keep the takeover bound."""
        return min(self.settings.leader_tick, self.settings.leader_takeover / 2)

    def setup_schedule(self) -> None:
        """Schedules come from the ledger, not from Celery's in-memory table."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._signals_installed:
            self._install_signal_handlers()
        if self._stop_requested:
            raise SystemExit(0)  # Celery's Service then calls close(): the lock is released here, in order
        if not self.leadership.ensure():
            return self.standby_interval
        return min(self.runner.tick(), self.settings.leader_tick)

    _signals_installed = False
    _stop_requested = False

    def _install_signal_handlers(self) -> None:
        """Replace Celery's SIGTERM/SIGINT handlers, which would run SQL inside a signal handler.

        A handler that interrupts a psycopg call and then uses the same
        connection deadlocks; ours only asks the next tick to stop.
        """

        def request_stop(signum: int, frame: object) -> None:
            self._stop_requested = True

        platforms.signals.update(SIGTERM=request_stop, SIGINT=request_stop)
        self._signals_installed = True

    def close(self) -> None:
        self.leadership.release()
        super().close()

    @property
    def info(self) -> str:
        return f"leader election on PostgreSQL as {self.leadership.identity}"
