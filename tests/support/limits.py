"""Limits for tests: set one as an operator would at runtime (``jobs limits set``), at once."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs import db, ledger, limit_store
from jobs.limits import Limit
from jobs.schema import limits
from jobs.settings import Settings

__all__ = ["remove_limits", "set_limit"]


def set_limit(settings: Settings, limit: Limit) -> None:
    """Create or replace ``limit`` in the ledger; this process sees it at once."""
    values = limit_store.values_of(limit)
    statement = pg_insert(limits).values(**values)
    with db.transaction(settings) as conn:
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["name"],
                set_={name: statement.excluded[name] for name in values if name != "name"},
            )
        )
    ledger.forget_targets()


def remove_limits(settings: Settings, *names: str) -> None:
    """Remove these limits from the ledger (their jobs' slots go with them); this process sees it at once."""
    with db.transaction(settings) as conn:
        conn.execute(sa.delete(limits).where(limits.c.name.in_(names)))
    ledger.forget_targets()
