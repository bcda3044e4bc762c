"""The ``limits`` table's store: the only writer of limits (declared in code or set at runtime)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.limits import Limit
from jobs.schema import limits

__all__ = ["ensure_declared", "values_of"]


def values_of(limit: Limit) -> dict[str, Any]:
    """A limit's columns."""
    return {
        "name": limit.name,
        "kind": limit.kind,
        "queue": limit.queue,
        "key": list(limit.path) if limit.path is not None else None,
        "concurrency": limit.concurrency,
        "rate": limit.rate_count,
        "period": limit.period,
        "burst": limit.burst,
    }


def ensure_declared(conn: sa.Connection, declared: Iterable[Limit]) -> None:
    """Write the limits a kind declares in code that the ledger does not have yet (a limit an
    operator set or changed at runtime is left as it is)."""
    for limit in declared:
        conn.execute(
            pg_insert(limits)
            .values(**values_of(limit), declared=True)
            .on_conflict_do_nothing(index_elements=["name"])
        )
