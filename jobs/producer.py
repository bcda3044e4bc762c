"""Submitting jobs: validate, insert into the ledger, publish after commit.

``submit`` returns only once the job's row is committed: from then on the job
is durable even if Redis is down (the leader's relay publishes it later).
With ``session=`` the row is written in the caller's transaction and published
after that transaction commits: the job exists only if the caller's data does.
The steps are drawn in docs/architecture.md, "Submit path".
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event

from jobs import db, duplicates, ledger, limit_store, publisher, submission
from jobs.catalog import load_kinds
from jobs.errors import BadInput, InvalidJobOptions
from jobs.kinds import Kind, Registry
from jobs.settings import Settings, get_settings

if TYPE_CHECKING:  # sessions come from the caller; the ORM is not needed to submit
    from sqlalchemy.orm import Session

__all__ = ["JobId", "Producer", "default_producer", "submit", "submit_many"]

log = logging.getLogger("jobs.producer")

BATCH = 1000


class JobId(uuid.UUID):
    """A submitted job's id, which also says how the submission went.

    ``duplicate``: no job was created, and this is the existing job's id;
    ``reason`` says why (``jobs.duplicates.Reason``: its idempotency key, its
    schedule's slot, its kind's unique window, or its debounce). ``published``:
    the message reached Redis now (if not, the job is safe in the ledger and
    the relay publishes it later). ``held``: its kind is under a limit with no
    room now; it waits in the ledger and starts when admitted (``jobs explain``).
    """

    __slots__ = ("duplicate", "held", "published", "reason")
    duplicate: bool
    published: bool
    reason: duplicates.Reason | None
    held: bool

    def __init__(
        self,
        value: uuid.UUID,
        *,
        duplicate: bool = False,
        published: bool = False,
        reason: duplicates.Reason | None = None,
        held: bool = False,
    ) -> None:
        # As uuid.UUID.__init__ sets its slots, without parsing again a value that is a UUID already.
        object.__setattr__(self, "int", value.int)
        object.__setattr__(self, "is_safe", value.is_safe)
        object.__setattr__(self, "duplicate", duplicate)
        object.__setattr__(self, "published", published)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "held", held)


class Producer:
    """Submits jobs for one set of settings (the module functions use the process-wide one)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.registry = registry or load_kinds(self.settings.kind_modules)
        self._synced: set[str] = set()

    def submit(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        submitted_by: str | None = None,
        session: Session | None = None,
        retry_of: uuid.UUID | None = None,
        schedule_name: str | None = None,
        schedule_slot: datetime | None = None,
    ) -> JobId:
        """Submit one job; see the module docstring.

        ``idempotency_key``: a second submit with the same key, kind and payload
        returns the first job with ``duplicate`` set, whatever its state, for as
        long as the ledger keeps it; with another kind or payload it raises
        ``IdempotencyConflict``. ``schedule_name`` and ``schedule_slot`` (given
        together) mark a firing of a schedule: the pair is unique, so a second
        submit for the same slot returns the existing job with ``duplicate`` set.
        A kind with a unique window or a debounce may return an existing job
        too (``duplicate``, with the ``reason``); docs/flow-control.md.
        """
        options = submission.Options(
            queue, priority, delay, at, max_attempts, submitted_by, retry_of, schedule_name, schedule_slot
        )
        definition = self.registry.get(kind)
        submission.check_texts(options, idempotency_key)
        row = submission.new_job(self.settings, definition, payload or {}, options, idempotency_key)
        if session is not None:
            return self._submit_in(session, [row], key=idempotency_key, kind=definition)[0]
        limited = self._known_limited(definition, row.queue)
        if limited is None:  # the cached list of limited kinds is stale: read it (once a second)
            with db.autocommit(self.settings) as conn:
                limited = self.limited(conn, definition, row.queue)
        collapsing = row.unique_key is not None or row.debounce_key is not None
        if not limited and not collapsing:  # the common case: one autocommitted statement
            existing = None
            if idempotency_key is None and row.schedule_name is None:  # nothing it can collide with
                with db.pooled(self.settings) as raw:
                    ledger.insert_one(raw, row, idempotent=False)
            else:
                with db.autocommit(self.settings) as conn:
                    existing = duplicates.insert_or_existing(conn, row, idempotency_key)
            if existing is not None:
                return _existing(existing)
            return JobId(row.id, published=self._publish([row]) == 1)
        # One transaction: a content key's lock lasts until the commit, and a job under a limit is
        # created held and admitted in it if there is room.
        admitted: list[ledger.Published] = []
        with db.transaction(self.settings) as conn:
            if limited:
                _held(row)
            if collapsing:
                existing = duplicates.collapse_or_insert(conn, definition, row, idempotency_key)
            else:
                existing = duplicates.insert_or_existing(conn, row, idempotency_key)
            if existing is None and limited:
                admitted = _hold(conn, [row])
        if existing is not None:
            return _existing(existing)
        if limited:
            return JobId(row.id, published=self.send(admitted) == len(admitted) > 0, held=not admitted)
        return JobId(row.id, published=self._publish([row]) == 1)

    def submit_many(
        self,
        kind: str,
        payloads: Iterable[Mapping[str, Any]],
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        max_attempts: int | None = None,
        submitted_by: str | None = None,
        session: Session | None = None,
        progress: Callable[[str, int], None] | None = None,
    ) -> list[JobId]:
        """Submit many jobs of one kind: all are valid and committed together, or none is.

        An invalid payload raises ``InvalidPayload`` whose message starts with
        its position (``item 12: ...``, counting from 1) and nothing is inserted.
        ``progress(phase, count)`` is called as items are checked ("checked"),
        committed ("committed") and published ("published").
        """
        report = progress or (lambda phase, count: None)
        options = submission.Options(queue, priority, delay, at, max_attempts, submitted_by)
        definition = self.registry.get(kind)
        if definition.unique is not None or definition.debounce is not None:
            which = "a unique window" if definition.unique is not None else "a debounce"
            raise InvalidJobOptions(f"kind {kind} has {which}: submit its jobs one by one")
        submission.check_texts(options, None)
        made = submission.Submission(self.settings, definition, options, None)
        rows: list[ledger.NewJob] = []

        def checked() -> Iterator[ledger.NewJob]:
            for number, payload in enumerate(payloads, start=1):
                try:
                    row = made.new_job(payload)
                except BadInput as error:
                    raise type(error)(f"item {number}: {error.message}") from None
                rows.append(row)
                if number % BATCH == 0:
                    report("checked", number)
                yield row
            report("checked", len(rows))

        if session is not None:
            rows = list(checked())
            return self._submit_in(session, rows, key=None) if rows else []
        # Rows stream into COPY as they are checked, so PostgreSQL works while Python validates;
        # an invalid item aborts the COPY and the transaction: nothing is inserted.
        with db.transaction(self.settings) as conn:
            limited = self.limited(
                conn, definition, options.queue or definition.queue or self.settings.default_queue
            )
            ledger.copy_rows(conn, (_held(row) for row in checked()) if limited else checked())
            admitted = _hold(conn, rows) if limited else []
        if not rows:
            return []
        report("committed", len(rows))
        items = admitted if limited else [row for row in rows if row.state == "queued"]
        sent = publisher.publish_committed(
            self.settings, self.registry, items, batch=BATCH, progress=lambda n: report("published", n)
        )
        published = sent == len(items)
        if not published:
            log.warning("%d job(s) are saved and will be published when Redis returns", len(items) - sent)
        if limited:
            entered = {item.id for item in admitted}
            return [
                JobId(
                    row.id,
                    published=published and row.id in entered,
                    held=row.state == "held" and row.id not in entered,
                )
                for row in rows
            ]
        return [JobId(row.id, published=published) for row in rows]

    def _submit_in(
        self, session: Session, rows: list[ledger.NewJob], *, key: str | None, kind: Kind | None = None
    ) -> list[JobId]:
        conn = session.connection()
        limited = self.limited(conn, self.registry.get(rows[0].kind), rows[0].queue)
        if limited:
            rows = [_held(row) for row in rows]
        if len(rows) == 1:
            row = rows[0]
            if kind is not None and (row.unique_key is not None or row.debounce_key is not None):
                # The content key's lock lasts until the caller commits.
                existing = duplicates.collapse_or_insert(conn, kind, row, key)
            else:
                existing = duplicates.insert_or_existing(conn, row, key)
            if existing is not None:
                return [_existing(existing)]
        else:
            ledger.insert_rows(conn, [row.columns() for row in rows], idempotent=False)
        # Under a limit, the jobs wait held; the leader admits them once the caller's transaction
        # commits (admitting here would hold the limit's lock until then, stalling its finishes).
        items: Sequence[publisher.Publishable] = (
            _hold(conn, rows, admit=False) if limited else [r for r in rows if r.state == "queued"]
        )
        self.publish_after_commit(session, items)
        return [JobId(row.id, held=row.state == "held") for row in rows]

    def publish_after_commit(self, session: Session, items: Sequence[publisher.Publishable]) -> None:
        """Publish these jobs once the caller's transaction commits (never if it rolls back)."""
        if not session.info.get("jobs.listening"):
            session.info["jobs.listening"] = True
            event.listen(session, "after_commit", self._after_commit)
            event.listen(session, "after_rollback", _forget)
        session.info.setdefault("jobs.pending", []).extend(items)

    def _after_commit(self, session: Session) -> None:
        items = session.info.pop("jobs.pending", [])
        if items:
            self.send(items)

    def _publish(self, rows: Sequence[ledger.NewJob]) -> int:
        items = [r for r in rows if r.state == "queued"]
        if not items:
            return len(rows)
        return self.send(items) + (len(rows) - len(items))

    def send(self, items: Sequence[publisher.Publishable]) -> int:
        """Publish committed jobs now; returns how many reached Redis (the relay sends the rest)."""
        return publisher.publish_committed(self.settings, self.registry, items) if items else 0

    def _known_limited(self, kind: Kind, queue: str) -> bool | None:
        """``limited`` from this process's cache, or ``None`` when it must ask the ledger."""
        if kind.limits and kind.name not in self._synced:
            return None
        return ledger.cached_applies(kind.name, queue)

    def limited(self, conn: Connection, kind: Kind, queue: str) -> bool:
        """Whether jobs of ``kind`` on ``queue`` are under a limit (declared, or set at runtime);
        the declared limits of a kind reach the ledger on its first submit in this process."""
        if kind.limits and kind.name not in self._synced:
            limit_store.ensure_declared(conn, kind.limits)
            ledger.forget_targets()
            self._synced.add(kind.name)
        return ledger.applies(conn, kind.name, queue)


def _existing(found: duplicates.Existing) -> JobId:
    return JobId(found.id, duplicate=True, reason=found.reason)


def _held(row: ledger.NewJob) -> ledger.NewJob:
    """A job under a limit is created ``held`` (``scheduled`` when delayed), never published."""
    if row.state == "queued":
        row.state = "held"
    row.published_at = None
    row.limited = True
    return row


def _hold(conn: Connection, rows: Sequence[ledger.NewJob], *, admit: bool = True) -> list[ledger.Published]:
    """Open the slots of new held jobs and admit those that fit now (in this transaction). A
    delayed job gets its slots when it is due (``ledger.hold_due``)."""
    ids = [row.id for row in rows if row.state == "held"]
    slots = ledger.hold(conn, ids)
    return ledger.admit_jobs(conn, ids, slots) if admit else []


def _forget(session: Session) -> None:
    session.info.pop("jobs.pending", None)


_default: Producer | None = None


def default_producer() -> Producer:
    """The process-wide producer (built on first use with the process-wide settings)."""
    global _default  # noqa: PLW0603 - one lazily built producer per process
    if _default is None:
        _default = Producer()
    return _default


def submit(kind: str, payload: Mapping[str, Any] | None = None, **options: Any) -> JobId:
    """Submit one job with the process-wide settings; see ``Producer.submit``."""
    return default_producer().submit(kind, payload, **options)


def submit_many(kind: str, payloads: Iterable[Mapping[str, Any]], **options: Any) -> list[JobId]:
    """Submit many jobs with the process-wide settings; see ``Producer.submit_many``."""
    return default_producer().submit_many(kind, payloads, **options)
