"""What every maintenance loop of the leader gets, and the shape each one has.

Kept apart from the loops (``beat.maintenance``, ``beat.cron``, ``beat.redrive``,
``beat.reclaim``) and from the runner that drives them (``beat.runner``), so
that no loop imports another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from celery import Celery

from jobs import db, ledger, publisher
from jobs.kinds import Registry
from jobs.settings import Settings

__all__ = ["Loop", "Maintenance", "publish_taken"]


@dataclass
class Maintenance:
    """What every loop gets: settings, the app to publish with, the kinds."""

    settings: Settings
    app: Celery
    registry: Registry


class Loop(Protocol):
    name: str
    interval: float

    def run(self, env: Maintenance) -> int:
        """Do one round; returns how many jobs it moved."""


def publish_taken(env: Maintenance, take: Callable[[sa.Connection], list[ledger.Published]]) -> int:
    """Take jobs for publishing in one statement, then send them (what fails goes back to the relay)."""
    with db.autocommit(env.settings) as conn:
        taken = take(conn)
    if not taken:
        return 0
    return publisher.publish_committed(env.settings, env.registry, taken)
