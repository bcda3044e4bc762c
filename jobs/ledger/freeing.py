"""What a job's end frees, in the transaction that records it: its limit slots (the next waiting
jobs of its keys are admitted, ``jobs.ledger.admission``) and its workflow children (counted,
released or cancelled, ``jobs.ledger.dependencies``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from jobs.counters import Tally
from jobs.ledger import admission, dependencies
from jobs.ledger.publishing import Published

__all__ = ["release"]


def release(
    conn: sa.Connection, ids: Sequence[uuid.UUID], *, tally: Tally | None = None, limited: bool = True
) -> list[Published]:
    """After these jobs finished, were retried, cancelled or rescued (in this transaction): free
    what they held and release what waited on them. Returns the jobs to publish after the commit;
    ``tally`` counts the workflow steps this ends in turn (cancelled or rejected). ``limited=False``:
    none of them is under a limit (their claim said so), so they hold no slot to free."""
    if not ids:
        return []
    admitted = admission.release(conn, ids) if limited else []
    return admitted + dependencies.release_children(conn, ids, tally=tally)
