"""Operators' changes to limits (``jobs limits``), each followed at once by an admission pass.

A change commits first; then one admission pass for the limits it touched admits what now fits,
in a transaction of its own, and the admitted jobs are published after that commit. So a raised
cap starts waiting jobs at once instead of on the leader's next tick, and a failed admission
never undoes the change (the leader's tick admits them then).

- ``set_limit``: an operator's value, which wins over the code's declaration of the same name
  (``jobs.limit_store`` explains the rule);
- ``remove``: deletes a limit set at runtime; a limit declared in code is refused (remove it
  there), and one the code declares but an operator changed goes back to the code's values;
- ``sync``: writes the limits this process's kinds declare (``jobs limits`` runs it; so does
  the leader).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from jobs import db, ledger, limit_store, limit_usage, publisher
from jobs.errors import InvalidLimit
from jobs.kinds import Registry
from jobs.limit_store import LimitRow
from jobs.limit_usage import KeyUsage
from jobs.limits import Limit
from jobs.settings import Settings

__all__ = ["Overview", "Removed", "admit", "overview", "remove", "set_limit", "sync"]

log = logging.getLogger("jobs.limits")


def admit(settings: Settings, registry: Registry, names: Sequence[str] | None) -> int:
    """One admission pass for ``names`` (None: every limit); publishes what it admitted after its
    commit and returns how many jobs it admitted."""
    with db.transaction(settings) as conn:
        published = _admit(conn, names)
    if published:
        publisher.publish_committed(settings, registry, published)
        log.info("admitted %d held job(s) for limits %s", len(published), ", ".join(names or ["(all)"]))
    return len(published)


def _admit(conn: sa.Connection, names: Sequence[str] | None) -> list[ledger.Published]:
    """Admit for ``names``; for every limit (None) after a removal, held jobs left with no limit
    to wait for are queued too."""
    if names is not None:
        return ledger.admit(conn, names=names)
    return ledger.admit(conn) + ledger.admit_orphans(conn)


def set_limit(settings: Settings, registry: Registry, limit: Limit, *, by: str) -> tuple[LimitRow, int]:
    """Save an operator's limit (an override when the code declares the name), then admit what
    now fits; returns the limit and how many jobs were admitted."""
    with db.transaction(settings) as conn:
        row, _ = limit_store.put(conn, limit, by=by)
    return row, admit(settings, registry, [limit.name])


@dataclass(frozen=True, slots=True)
class Removed:
    """What ``remove`` did: the limit as it was, and the code's version when it went back to it."""

    was: LimitRow
    restored: LimitRow | None
    admitted: int


def remove(settings: Settings, registry: Registry, name: str, *, by: str) -> Removed:
    """Delete a limit set at runtime (its waiting jobs are admitted if nothing else holds them), or
    give a declared limit an operator changed back to the code."""
    declared = limit_store.declared_limits(registry).get(name)
    with db.transaction(settings) as conn:
        was = limit_store.get(conn, name)
        if declared is not None and was.declared:
            raise InvalidLimit(
                f"limit {name!r} is declared in code on kind {declared.kind or '?'}: remove it there; "
                f"to change it at runtime: jobs limits set {name} …"
            )
        if declared is not None:
            restored, _ = limit_store.put(conn, declared, by=by, declared=True, retarget=True)
        else:
            limit_store.remove(conn, name)
            restored = None
    # A deleted limit's jobs may wait on other limits, or on none: admit for every limit.
    admitted = admit(settings, registry, [name] if restored is not None else None)
    return Removed(was, restored, admitted)


def sync(settings: Settings, registry: Registry) -> list[str]:
    """Write the limits this process's kinds declare (``limit_store.sync_declared``); when any
    changed (or went), one admission pass for every limit. Returns the names it wrote or deleted."""
    with db.transaction(settings) as conn:
        changed = limit_store.sync_declared(conn, registry)
    if changed:
        log.info("limits declared in code written: %s", ", ".join(changed))
        admit(settings, registry, None)
    return changed


@dataclass(frozen=True, slots=True)
class Overview:
    """Limits and how full their keys are, read at one moment (``now``, the database's)."""

    now: datetime
    limits: list[LimitRow]
    usage: dict[str, list[KeyUsage]]

    def keys(self, name: str) -> list[KeyUsage]:
        return self.usage.get(name, [])


def overview(settings: Settings, name: str | None = None, *, top: int = 20) -> Overview:
    """Every limit (or the one named) with its ``top`` busiest keys and an aggregate of the rest."""
    with db.transaction(settings) as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
        rows = limit_store.list_limits(conn) if name is None else [limit_store.get(conn, name)]
        used = limit_usage.usage(conn, name, top=top)
    return Overview(now, rows, used)
