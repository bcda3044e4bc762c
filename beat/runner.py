"""Runs the leader's maintenance loops, each on its own interval, and records their last runs.

The runner records when each loop last ran, and its result or error, in
``maintenance_runs`` (``jobs.maintenance_runs``, at most every ``RECORD_EVERY``
seconds), which ``jobs schedule list`` shows. A loop that fails is logged and
runs again at its next turn: one broken loop never stops the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from beat.context import Loop, Maintenance
from jobs import db, maintenance_runs

__all__ = ["RECORD_EVERY", "Runner"]

log = logging.getLogger("jobs.beat")

RECORD_EVERY = 5.0


@dataclass
class Runner:
    """Runs each loop when it is due; a loop that fails is logged and tried next time."""

    env: Maintenance
    loops: Sequence[Loop]
    record: bool = True
    identity: str | None = None
    _next: dict[str, float] = field(default_factory=dict)
    _runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _recorded_at: float = float("-inf")

    def tick(self) -> float:
        now = time.monotonic()
        for loop in self.loops:
            if self._next.get(loop.name, 0.0) > now:
                continue
            result: int | None = None
            error: str | None = None
            try:
                result = loop.run(self.env)
            except Exception as failure:
                log.exception("maintenance loop %s failed; it runs again next tick", loop.name)
                error = f"{type(failure).__name__}: {str(failure).strip()[:500]}"
            self._runs[loop.name] = {
                "name": loop.name,
                "interval_seconds": loop.interval,
                "last_run_at": datetime.now(UTC),
                "last_result": result,
                "last_error": error,
                "leader": self.identity,
            }
            self._next[loop.name] = time.monotonic() + loop.interval
        self._record()
        upcoming = min(self._next.values(), default=now + 1.0)
        return max(0.05, upcoming - time.monotonic())

    def _record(self) -> None:
        """Write the loops' last runs, at most every ``RECORD_EVERY`` seconds; never fails the tick."""
        if not self.record or not self._runs or time.monotonic() - self._recorded_at < RECORD_EVERY:
            return
        self._recorded_at = time.monotonic()
        try:
            with db.transaction(self.env.settings) as conn:
                maintenance_runs.record(conn, list(self._runs.values()))
        except Exception as error:
            log.warning("could not record the maintenance loops' last runs: %s", error)
            return
        self._runs.clear()
