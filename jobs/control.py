"""Operator actions on jobs: cancel, and replay a finished job as a new one; one job or many.

The bulk forms work on a list of ids (given, or selected by ``Filters`` with
``matching``) in batches of ``BATCH`` ids, one transaction per batch, so a
large set never holds one long transaction or a lock on every row at once.

- **Cancel** moves unfinished jobs to ``cancelled``. Running ones are also
  revoked (one broadcast per batch) so that their workers stop the bodies.
  A job that finished between selection and action is reported as skipped.
- **Replay** submits a new job with a ``failed`` or ``cancelled`` job's kind
  and payload, linked by ``retry_of``. A job is replayed at most once: its
  row is locked while the batch checks for an existing replay, so running a
  bulk retry twice (even concurrently) makes no second copy. To run a job a
  third time, replay its replay.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from jobs import counters, db, kinds, ledger, publisher
from jobs.errors import BadInput, InvalidTransition, JobNotFound
from jobs.lookup import Filters
from jobs.producer import JobId, Producer
from jobs.schema import jobs
from jobs.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "BATCH",
    "CANCELLABLE",
    "REPLAYABLE",
    "Cancelled",
    "Match",
    "Replayed",
    "cancel",
    "cancel_many",
    "matching",
    "replay",
    "replay_many",
]

log = logging.getLogger("jobs.control")

BATCH = 500
CANCELLABLE = ledger.sources("cancel")
REPLAYABLE = ("failed", "cancelled")
ACTIONS = {"cancel": CANCELLABLE, "retry": REPLAYABLE}

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Match:
    """A job a bulk action would act on."""

    id: uuid.UUID
    kind: str
    state: str
    queue: str
    created_at: Any


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What cancelling one job did: ``was`` is its state before, or ``None`` if it was skipped."""

    id: uuid.UUID
    was: str | None
    state: str | None  # now: "cancelled", or the state that made it skip (None: no such job)


@dataclass(frozen=True, slots=True)
class Replayed:
    """What replaying one job did: the new job, or why it was skipped."""

    id: uuid.UUID
    new: JobId | None
    skipped: str | None = None
    earlier: uuid.UUID | None = None  # the replay made before, when that is why it was skipped


def _chunks(ids: Sequence[uuid.UUID], size: int) -> list[Sequence[uuid.UUID]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def matching(settings: Settings, filters: Filters, action: str) -> list[Match]:
    """The jobs ``action`` ("cancel" or "retry") would act on, oldest first.

    States outside the action's own (cancel: unfinished; retry: failed or
    cancelled) are refused; no state filter means all of the action's states.
    A retry never selects a job that was already replayed.
    """
    allowed = ACTIONS[action]
    wrong = [state for state in filters.states if state not in allowed]
    if wrong:
        raise BadInput(f"cannot {action} {wrong[0]} jobs: choose --state among {', '.join(allowed)}")
    if filters.since is not None and filters.until is not None and filters.since >= filters.until:
        raise BadInput("--since must be before --until")
    states = list(filters.states or allowed)
    query = sa.select(jobs.c.id, jobs.c.kind, jobs.c.state, jobs.c.queue, jobs.c.created_at).where(
        *Filters(states, filters.kinds, filters.queues, filters.since, filters.until).where()
    )
    if action == "retry":
        replays = sa.alias(jobs, "replays")
        query = query.where(~sa.exists().where(replays.c.retry_of == jobs.c.id))
    with db.transaction(settings) as conn:
        rows = conn.execute(query.order_by(jobs.c.created_at, jobs.c.id)).all()
    return [Match(*row) for row in rows]


def cancel_many(
    settings: Settings,
    app: Celery,
    ids: Sequence[uuid.UUID],
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> list[Cancelled]:
    """Cancel these jobs, ``batch`` per transaction; running ones are revoked after each commit."""
    results: list[Cancelled] = []
    for chunk in _chunks(ids, batch):
        done: dict[uuid.UUID, str] = {}
        tally = counters.Tally()
        with db.transaction(settings) as conn:
            for job_id in chunk:
                previous = ledger.cancel(conn, job_id, tally=tally)
                if previous is not None:
                    done[job_id] = previous
            left = [job_id for job_id in chunk if job_id not in done]
            now = _states(conn, left) if left else {}
            # Jobs under a limit free their slots: the next waiting ones are admitted with the cancel;
            # a workflow's steps that needed a cancelled one are cancelled with it.
            admitted = ledger.release(conn, list(done), tally=tally)
            counters.write(conn, tally.take())  # the counts commit with the cancellations
        publisher.publish_committed(settings, kinds.registry, admitted)
        running = [str(job_id) for job_id, was in done.items() if was == "running"]
        if running:
            revoke(app, running)
        for job_id in chunk:
            if job_id in done:
                results.append(Cancelled(job_id, done[job_id], "cancelled"))
            else:
                results.append(Cancelled(job_id, None, now.get(job_id)))
        if progress is not None:
            progress(len(chunk))
    return results


def _states(conn: sa.Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = conn.execute(sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(ids)))
    return {row.id: row.state for row in rows}


def revoke(app: Celery, ids: list[str]) -> None:
    """Stop these running jobs' bodies (SIGTERM through Celery's revoke); best effort: the ledger says
    cancelled already."""
    try:
        app.control.revoke(ids, terminate=True, signal="SIGTERM")
    except Exception as error:  # the ledger already says cancelled; stopping the bodies is best effort
        log.warning(
            "%d running job(s) are cancelled but their workers could not be told: %s", len(ids), error
        )


def cancel(settings: Settings, app: Celery, job_id: uuid.UUID) -> str:
    """Cancel a job that has not finished; returns the state it was in.

    A queued, delayed or retrying job is cancelled at once. A running job is
    marked cancelled too (its body's work will not commit) and its worker is
    asked to stop the body.
    """
    (result,) = cancel_many(settings, app, [job_id])
    if result.was is None:
        if result.state is None:
            raise JobNotFound(f"no job with id {job_id}")
        raise InvalidTransition(
            f"job {job_id} is already {result.state}; only unfinished jobs can be cancelled"
        )
    return result.was


_REPLAY_COLUMNS = (
    jobs.c.id,
    jobs.c.kind,
    jobs.c.payload,
    jobs.c.queue,
    jobs.c.priority,
    jobs.c.state,
    jobs.c.max_attempts,
)


def replay_many(
    producer: Producer,
    ids: Sequence[uuid.UUID],
    *,
    submitted_by: str | None = None,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> list[Replayed]:
    """Replay these jobs, ``batch`` per transaction; the new jobs are published after each commit.

    A job that is not failed or cancelled, was replayed already, or whose
    payload no longer fits its kind is skipped with the reason.
    """
    results: list[Replayed] = []
    for chunk in _chunks(ids, batch):
        settings = producer.settings
        with db.ledger_errors(settings.database_url), db.session(settings) as session, session.begin():
            # Locking the old rows serializes two replays of the same job: the second one
            # waits here, then sees the first one's replay below.
            rows = {
                row.id: row
                for row in session.execute(
                    sa.select(*_REPLAY_COLUMNS)
                    .where(jobs.c.id.in_(list(chunk)))
                    .order_by(jobs.c.id)
                    .with_for_update()
                )
            }
            replays = session.execute(
                sa.select(jobs.c.retry_of, jobs.c.id).where(jobs.c.retry_of.in_(list(rows)))
            )
            earlier: dict[uuid.UUID, uuid.UUID] = {row.retry_of: row.id for row in replays}
            done = [_replay_one(producer, session, job_id, rows, earlier, submitted_by) for job_id in chunk]
        results.extend(_with_published(producer.settings, done))
        if progress is not None:
            progress(len(chunk))
    return results


def _replay_one(
    producer: Producer,
    session: Any,
    job_id: uuid.UUID,
    rows: dict[uuid.UUID, Any],
    earlier: dict[uuid.UUID, uuid.UUID],
    submitted_by: str | None,
) -> Replayed:
    row = rows.get(job_id)
    if row is None:
        return Replayed(job_id, None, "no such job")
    if row.state not in REPLAYABLE:
        return Replayed(job_id, None, f"it is {row.state}")
    if job_id in earlier:
        return Replayed(job_id, None, f"already retried as {earlier[job_id]}", earlier[job_id])
    try:
        new = producer.submit(
            row.kind,
            row.payload,
            queue=row.queue,
            priority=row.priority,
            max_attempts=row.max_attempts,
            submitted_by=submitted_by,
            retry_of=job_id,
            session=session,
        )
    except BadInput as error:  # validated before anything is written: the batch goes on
        return Replayed(job_id, None, error.message)
    earlier[job_id] = new
    return Replayed(job_id, new)


def replay(producer: Producer, job_id: uuid.UUID, *, submitted_by: str | None = None) -> JobId:
    """Submit a new job with a failed or cancelled job's kind and payload, linked by ``retry_of``.

    A job that was replayed already is not replayed again: its replay's id is
    returned, with ``duplicate`` set.
    """
    (result,) = replay_many(producer, [job_id], submitted_by=submitted_by)
    if result.new is not None:
        return result.new
    if result.earlier is not None:
        return JobId(result.earlier, duplicate=True)
    if result.skipped == "no such job":
        raise JobNotFound(f"no job with id {job_id}")
    if result.skipped and result.skipped.startswith("it is "):
        state = result.skipped.removeprefix("it is ")
        raise InvalidTransition(f"job {job_id} is {state}; only failed or cancelled jobs can be retried")
    raise BadInput(f"job {job_id} cannot be retried: {result.skipped}")


def _with_published(settings: Settings, done: list[Replayed]) -> list[Replayed]:
    """New jobs are published after their batch commits: read back which ones were."""
    new = [result.new for result in done if result.new is not None]
    if not new:
        return done
    with db.transaction(settings) as conn:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.published_at).where(jobs.c.id.in_(new)))
        published = {row.id for row in rows if row.published_at is not None}
    return [
        dataclasses.replace(result, new=JobId(result.new, published=result.new in published))
        if result.new is not None
        else result
        for result in done
    ]
