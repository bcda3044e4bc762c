"""Reading the ledger for people and scripts: one job with its attempts, or a filtered page of jobs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from jobs import db, parentage
from jobs.errors import JobNotFound
from jobs.schema import TERMINAL_STATES, job_attempts, jobs
from jobs.settings import Settings

if TYPE_CHECKING:  # a registry is passed in by the callers that mask payloads
    from jobs.kinds import Registry

__all__ = ["Filters", "get_job", "list_jobs", "parse_id"]


def parse_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise JobNotFound(f"{text!r} is not a job id (a UUID like 0b7c…)") from None


def _mask(registry: Registry, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    if kind in registry and registry.get(kind).has_secrets:
        return registry.get(kind).display(payload)
    return payload


def _plain(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {key: (str(value) if isinstance(value, uuid.UUID) else value) for key, value in row.items()}


def get_job(settings: Settings, registry: Registry, job_id: uuid.UUID) -> dict[str, Any]:
    """Everything the ledger knows of one job, secrets masked, attempts in order, and for a
    workflow's step its workflow (``workflow``: id, name, step, parents, what it waits for)."""
    with db.transaction(settings) as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"no job with id {job_id}")
        attempts = conn.execute(
            sa.select(job_attempts).where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.attempt)
        ).all()
        step = parentage.step_of(conn, row._mapping)
    job = _plain(row._mapping)
    job["workflow"] = step.as_dict() if step is not None else None
    job["payload"] = _mask(registry, job["kind"], job["payload"])
    job["terminal"] = job["state"] in TERMINAL_STATES
    job["attempts"] = [
        {k: v for k, v in _plain(attempt._mapping).items() if k != "job_id"} for attempt in attempts
    ]
    return job


@dataclass(frozen=True, slots=True)
class Filters:
    """What ``jobs list`` (and bulk operations) select."""

    states: Sequence[str] = ()
    kinds: Sequence[str] = ()
    queues: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = []
        if self.states:
            clauses.append(jobs.c.state.in_(list(self.states)))
        if self.kinds:
            clauses.append(jobs.c.kind.in_(list(self.kinds)))
        if self.queues:
            clauses.append(jobs.c.queue.in_(list(self.queues)))
        if self.since is not None:
            clauses.append(jobs.c.created_at >= self.since)
        if self.until is not None:
            clauses.append(jobs.c.created_at < self.until)
        return clauses


LIST_COLUMNS = (
    jobs.c.id,
    jobs.c.kind,
    jobs.c.state,
    jobs.c.queue,
    jobs.c.priority,
    jobs.c.attempt,
    jobs.c.max_attempts,
    jobs.c.created_at,
    jobs.c.finished_at,
    jobs.c.worker,
    jobs.c.error["message"].astext.label("error"),
)


def list_jobs(
    settings: Settings, filters: Filters, *, limit: int = 50, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """A page of jobs, newest first, and how many match in all."""
    where = filters.where()
    with db.transaction(settings) as conn:
        rows = conn.execute(
            sa.select(*LIST_COLUMNS)
            .where(*where)
            .order_by(jobs.c.created_at.desc(), jobs.c.id)
            .limit(limit)
            .offset(offset)
        ).all()
        total = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(*where)).scalar_one()
    return [_plain(row._mapping) for row in rows], int(total)


def states_of(settings: Settings, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """State, attempt and progress of some jobs (what ``wait`` polls)."""
    with db.transaction(settings) as conn:
        rows = conn.execute(
            sa.select(
                jobs.c.id,
                jobs.c.state,
                jobs.c.attempt,
                jobs.c.max_attempts,
                jobs.c.progress,
                jobs.c.result,
                jobs.c.error,
            ).where(jobs.c.id.in_(list(ids)))
        ).all()
    return {row.id: dict(row._mapping) for row in rows}
