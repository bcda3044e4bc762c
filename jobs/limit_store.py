"""The ``limits`` table's one owner: every statement that writes it.

A limit is declared on a kind in code (``jobs.Limit``) or set at runtime (``jobs limits set``);
both end up as one row here, which admission (``jobs.ledger.admission``) reads. Who wins when
both name a limit:

- ``sync_declared`` writes what the code declares: it inserts a declared limit that has no row
  and updates a row still marked ``declared``; it never touches a row an operator set or changed
  (``declared`` false): **runtime values win over code** until that row is removed.
- ``put`` writes what an operator set, marked not declared; setting a declared limit's name
  takes it over from the code.
- ``remove`` deletes a row; its ``limit_slots`` and ``limit_keys`` rows go with it (``ON DELETE
  CASCADE``), so jobs that waited only on it are admitted by the next admission pass.
  ``jobs.limit_control.remove`` (``jobs limits remove``) refuses a limit the code still
  declares, and hands an overridden declared limit back to the code in place instead
  (``put(..., declared=True)``), so the jobs it admitted keep their slots.

A kind limit's rows keep the key their jobs were given: a limit's target (kind, queue, key)
changes only through ``put(..., retarget=True)`` (the code's sync), never by an operator's set.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs.errors import InvalidLimit, LimitNotFound
from jobs.kinds import Registry
from jobs.limits import PERIODS, Limit
from jobs.schema import limits

__all__ = [
    "LimitRow",
    "declared_limits",
    "ensure_declared",
    "exists",
    "get",
    "list_limits",
    "put",
    "rate_text",
    "remove",
    "sync_declared",
    "values_of",
]

_UNITS = {1.0: "s", 60.0: "m", 3600.0: "h"}
assert set(_UNITS.values()) <= set(PERIODS)


def rate_text(rate: int, period: float) -> str:
    """A rate as ``jobs.limits.parse_rate`` reads it back: ``20/s``, ``100/m``, ``5/10s``."""
    unit = _UNITS.get(period)
    return f"{rate}/{unit}" if unit else f"{rate}/{period:g}s"


@dataclass(frozen=True, slots=True)
class LimitRow:
    """One limit as the ledger holds it: what it limits and how much, and who set it."""

    name: str
    kind: str | None
    queue: str | None
    key: str | None
    """The payload field path of a per-key limit, dotted (``customer.id``); None: one for all."""
    concurrency: int | None
    rate: int | None
    period: float | None
    burst: int
    declared: bool
    """Written from a kind's declaration in code (not set or changed by an operator since)."""
    created_at: datetime
    updated_at: datetime
    updated_by: str | None

    @classmethod
    def from_row(cls, row: Any) -> LimitRow:
        return cls(
            name=row.name,
            kind=row.kind,
            queue=row.queue,
            key=".".join(row.key) if row.key else None,
            concurrency=row.concurrency,
            rate=row.rate,
            period=row.period,
            burst=row.burst,
            declared=row.declared,
            created_at=row.created_at,
            updated_at=row.updated_at,
            updated_by=row.updated_by,
        )

    @property
    def rate_text(self) -> str | None:
        return None if self.rate is None or self.period is None else rate_text(self.rate, self.period)

    @property
    def interval(self) -> float | None:
        """A rate limit's emission interval in seconds (period / rate): one start per interval."""
        return None if self.rate is None or self.period is None else self.period / self.rate

    @property
    def target(self) -> str:
        """``kind crm.sync per tenant`` / ``queue mail``."""
        what = f"kind {self.kind}" if self.kind is not None else f"queue {self.queue}"
        return what + (f" per {self.key}" if self.key else "")

    def describe(self) -> str:
        """``2 at once`` / ``20/s (burst 5)``."""
        if self.concurrency is not None:
            return f"{self.concurrency} at once"
        return f"{self.rate_text}" + (f" (burst {self.burst})" if self.burst else "")

    def spec(self) -> Limit:
        """The row as a ``jobs.Limit``."""
        return Limit(
            self.name,
            concurrency=self.concurrency,
            rate=self.rate_text,
            burst=self.burst,
            key=self.key,
            queue=self.queue,
            kind=self.kind,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "queue": self.queue,
            "key": self.key,
            "concurrency": self.concurrency,
            "rate": self.rate_text,
            "rate_count": self.rate,
            "period_seconds": self.period,
            "burst": self.burst,
            "declared": self.declared,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


def values_of(limit: Limit) -> dict[str, Any]:
    """A limit's columns (its name aside)."""
    path = limit.path
    return {
        "kind": limit.kind,
        "queue": limit.queue,
        "key": list(path) if path is not None else None,
        "concurrency": limit.concurrency,
        "rate": limit.rate_count,
        "period": limit.period,
        "burst": limit.burst,
    }


_TARGET = ("kind", "queue", "key")


def exists(conn: sa.Connection) -> bool:
    """Whether any limit is set (the leader's admitter idles at the leader's tick when none is)."""
    return bool(conn.execute(sa.select(sa.exists().select_from(limits))).scalar())


def list_limits(conn: sa.Connection) -> list[LimitRow]:
    """Every limit, by name."""
    return [LimitRow.from_row(row) for row in conn.execute(sa.select(limits).order_by(limits.c.name))]


def get(conn: sa.Connection, name: str) -> LimitRow:
    """One limit, or ``LimitNotFound`` suggesting the closest name."""
    row = conn.execute(sa.select(limits).where(limits.c.name == name)).first()
    if row is not None:
        return LimitRow.from_row(row)
    names = list(conn.execute(sa.select(limits.c.name)).scalars())
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "see jobs limits"
    raise LimitNotFound(f"no limit named {name!r} ({hint})")


def put(
    conn: sa.Connection, limit: Limit, *, by: str | None, declared: bool = False, retarget: bool = False
) -> tuple[LimitRow, bool]:
    """Insert or update a limit; returns it and whether anything changed.

    An existing limit keeps what it limits (kind, queue, key) unless ``retarget``: its waiting
    and admitted jobs were given keys under that target. ``declared`` marks the row as the
    code's (``sync_declared``); an operator's ``put`` leaves it false.
    """
    if (limit.kind is None) == (limit.queue is None):
        raise InvalidLimit(f"limit {limit.name!r}: limit a kind or a queue (one of them)")
    values = values_of(limit)
    old = conn.execute(sa.select(limits).where(limits.c.name == limit.name).with_for_update()).first()
    if old is not None and not retarget and any(values[c] != getattr(old, c) for c in _TARGET):
        raise InvalidLimit(
            f"limit {limit.name!r} limits {LimitRow.from_row(old).target}: to limit something else, "
            f"remove it first (jobs limits remove {limit.name}) or use another name"
        )
    if old is not None and old.declared == declared and all(values[c] == getattr(old, c) for c in values):
        return LimitRow.from_row(old), False
    row = conn.execute(
        pg_insert(limits)
        .values(name=limit.name, **values, declared=declared, updated_by=by)
        .on_conflict_do_update(
            index_elements=[limits.c.name],
            set_={**values, "declared": declared, "updated_at": sa.func.now(), "updated_by": by},
        )
        .returning(*limits.c)
    ).one()
    return LimitRow.from_row(row), True


def remove(conn: sa.Connection, name: str) -> LimitRow:
    """Delete a limit, with its slots and keys; returns what it was.

    Jobs that waited only on it are admitted by the next admission pass (the caller runs one).
    A limit a kind still declares comes back at the next ``sync_declared``: the caller checks.
    """
    shown = get(conn, name)
    conn.execute(sa.delete(limits).where(limits.c.name == name))
    return shown


def declared_limits(registry: Registry) -> dict[str, Limit]:
    """The limits the registry's kinds declare, by name (the first kind's wins a name twice)."""
    found: dict[str, Limit] = {}
    for kind in registry:
        for limit in kind.limits:
            found.setdefault(limit.name, limit)
    return found


def sync_declared(conn: sa.Connection, registry: Registry) -> list[str]:
    """Write the limits the registry's kinds declare; returns the names it added or changed.

    Inserts a declared limit with no row; updates a row still marked ``declared`` to the code's
    definition (target included); leaves alone a row an operator set or changed. A declared row
    that no kind declares any more is deleted only when its kind is registered here (a process
    that loads fewer kind modules must not delete the others' limits); a declared queue limit
    stays until ``jobs limits remove`` (no row says which kind declared it).
    """
    declared = declared_limits(registry)
    existing = {
        row.name: row
        for row in conn.execute(sa.select(limits).where(limits.c.declared).with_for_update()).all()
    }
    overridden = set(
        conn.execute(
            sa.select(limits.c.name).where(limits.c.name.in_(declared), sa.not_(limits.c.declared))
        ).scalars()
    )
    changed: list[str] = []
    for name, limit in sorted(declared.items()):
        if name in overridden:
            continue
        _, wrote = put(conn, limit, by="code", declared=True, retarget=True)
        if wrote:
            changed.append(name)
    gone = [
        name
        for name, row in existing.items()
        if name not in declared and row.kind is not None and row.kind in registry
    ]
    _delete(conn, gone)
    return changed + sorted(gone)


def _delete(conn: sa.Connection, names: Iterable[str]) -> None:
    names = list(names)
    if names:
        conn.execute(sa.delete(limits).where(limits.c.name.in_(names)))


def ensure_declared(conn: sa.Connection, declared: Iterable[Limit]) -> None:
    """Insert the declared limits the ledger has no row for (a worker or producer that starts
    before the leader synced); an existing row, declared or set by an operator, is left as it is."""
    for limit in declared:
        conn.execute(
            pg_insert(limits)
            .values(name=limit.name, **values_of(limit), declared=True, updated_by="code")
            .on_conflict_do_nothing(index_elements=[limits.c.name])
        )
