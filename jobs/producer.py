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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from jobs import db, duplicates, jsonsafe, ledger, publisher
from jobs.catalog import load_kinds
from jobs.errors import BadInput, InvalidJobOptions, PayloadTooLarge
from jobs.kinds import Kind, Registry
from jobs.limits import content_key
from jobs.settings import Settings, get_settings

if TYPE_CHECKING:  # sessions come from the caller; the ORM is not needed to submit
    from sqlalchemy.orm import Session

__all__ = ["JobId", "Producer", "submit", "submit_many"]

log = logging.getLogger("jobs.producer")

BATCH = 1000


class JobId(uuid.UUID):
    """A submitted job's id, which also says how the submission went.

    ``duplicate``: no job was created, and this is the existing job's id;
    ``reason`` says why (``jobs.duplicates.Reason``: its idempotency key, its
    schedule's slot, its kind's unique window, or its debounce). ``published``:
    the message reached Redis now (if not, the job is safe in the ledger and
    the relay publishes it later).
    """

    __slots__ = ("duplicate", "published", "reason")
    duplicate: bool
    published: bool
    reason: duplicates.Reason | None

    def __init__(
        self,
        value: uuid.UUID,
        *,
        duplicate: bool = False,
        published: bool = False,
        reason: duplicates.Reason | None = None,
    ) -> None:
        # As uuid.UUID.__init__ sets its slots, without parsing again a value that is a UUID already.
        object.__setattr__(self, "int", value.int)
        object.__setattr__(self, "is_safe", value.is_safe)
        object.__setattr__(self, "duplicate", duplicate)
        object.__setattr__(self, "published", published)
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True, slots=True)
class _Options:
    queue: str | None = None
    priority: int | None = None
    delay: float | timedelta | None = None
    at: datetime | None = None
    max_attempts: int | None = None
    submitted_by: str | None = None
    retry_of: uuid.UUID | None = None
    schedule_name: str | None = None
    schedule_slot: datetime | None = None


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
        options = _Options(
            queue, priority, delay, at, max_attempts, submitted_by, retry_of, schedule_name, schedule_slot
        )
        definition = self.registry.get(kind)
        _check_texts(options, idempotency_key)
        row = self._row(definition, payload or {}, options, idempotency_key)
        if session is not None:
            return self._submit_in(session, [row], key=idempotency_key, kind=definition)[0]
        if row.unique_key is None and row.debounce_key is None:
            with db.autocommit(self.settings) as conn:
                existing = duplicates.insert_or_existing(conn, row, idempotency_key)
        else:  # the content key's lock lasts until the commit
            with db.transaction(self.settings) as conn:
                existing = duplicates.collapse_or_insert(conn, definition, row, idempotency_key)
        if existing is not None:
            return _existing(existing)
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
        options = _Options(queue, priority, delay, at, max_attempts, submitted_by)
        definition = self.registry.get(kind)
        if definition.unique is not None or definition.debounce is not None:
            which = "a unique window" if definition.unique is not None else "a debounce"
            raise InvalidJobOptions(f"kind {kind} has {which}: submit its jobs one by one")
        _check_texts(options, None)
        rows: list[ledger.NewJob] = []

        def checked() -> Iterator[ledger.NewJob]:
            for number, payload in enumerate(payloads, start=1):
                try:
                    row = self._row(definition, payload, options, None)
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
            ledger.copy_rows(conn, checked())
        if not rows:
            return []
        report("committed", len(rows))
        items = [_publishable(row) for row in rows if row.state == "queued"]
        sent = publisher.publish_committed(
            self.settings, self.registry, items, batch=BATCH, progress=lambda n: report("published", n)
        )
        published = sent == len(items)
        if not published:
            log.warning("%d job(s) are saved and will be published when Redis returns", len(items) - sent)
        return [JobId(row.id, published=published) for row in rows]

    def _row(
        self,
        kind: Kind,
        payload: Mapping[str, Any],
        options: _Options,
        key: str | None,
    ) -> ledger.NewJob:
        data = kind.dump(kind.validate(payload))
        data_json = kind.to_json(data)
        size = len(data_json.encode())
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload of {size} bytes is over the limit of {self.settings.max_payload_bytes} "
                "bytes (JOBS_MAX_PAYLOAD_BYTES); store large data elsewhere and pass its id"
            )
        priority = kind.priority if options.priority is None else options.priority
        if not 0 <= priority <= 9:
            raise InvalidJobOptions(f"priority {priority} is out of range: use 0 (first) to 9 (last)")
        attempts = options.max_attempts or kind.max_attempts or self.settings.max_attempts
        if attempts < 1:
            raise InvalidJobOptions("max attempts must be at least 1")
        if key is not None and not 0 < len(key) <= 255:
            raise InvalidJobOptions("an idempotency key must be 1 to 255 characters")
        not_before = _due(options.delay, options.at)
        unique_key = content_key(kind.name, data, kind.unique.paths) if kind.unique else None
        debounce_key = content_key(kind.name, data, kind.debounce.paths) if kind.debounce else None
        if kind.debounce is not None and options.retry_of is None:
            if options.delay is not None or options.at is not None:
                raise InvalidJobOptions(
                    f"kind {kind.name} debounces: its job runs {kind.debounce.period:g}s after the last "
                    "submission, so it takes no delay or time"
                )
            # Replaced by the server's clock when inserted (jobs.duplicates.collapse_or_insert).
            not_before = datetime.now(UTC) + timedelta(seconds=kind.debounce.period)
        if options.schedule_name is not None or options.schedule_slot is not None:
            if options.schedule_name is None or options.schedule_slot is None:
                raise InvalidJobOptions("a schedule firing needs both its schedule name and its slot")
            if options.schedule_slot.tzinfo is None:
                raise InvalidJobOptions("a schedule slot must include its UTC offset")
        return ledger.NewJob(
            id=uuid.uuid4(),
            kind=kind.name,
            queue=options.queue or kind.queue or self.settings.default_queue,
            priority=priority,
            payload=data,
            payload_json=data_json,
            state="scheduled" if not_before is not None else "queued",
            max_attempts=attempts,
            not_before=not_before,
            idempotency_key=key,
            submitted_by=options.submitted_by,
            retry_of=options.retry_of,
            # Marked published as it is created, on the server's clock like created_at; a failed
            # publish clears it (see jobs.publisher).
            published_at=None if not_before is not None else ledger.SERVER_NOW,
            schedule_name=options.schedule_name,
            schedule_slot=options.schedule_slot,
            unique_key=unique_key,
            debounce_key=debounce_key,
        )

    def _submit_in(
        self, session: Session, rows: list[ledger.NewJob], *, key: str | None, kind: Kind | None = None
    ) -> list[JobId]:
        conn = session.connection()
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
        if not session.info.get("jobs.listening"):
            session.info["jobs.listening"] = True
            event.listen(session, "after_commit", self._after_commit)
            event.listen(session, "after_rollback", _forget)
        session.info.setdefault("jobs.pending", []).extend(rows)
        return [JobId(row.id) for row in rows]

    def _after_commit(self, session: Session) -> None:
        rows = session.info.pop("jobs.pending", [])
        if rows:
            self._publish(rows)

    def _publish(self, rows: Sequence[ledger.NewJob]) -> int:
        items = [_publishable(r) for r in rows if r.state == "queued"]
        if not items:
            return len(rows)
        sent = publisher.publish_committed(self.settings, self.registry, items)
        return sent + (len(rows) - len(items))


def _check_texts(options: _Options, key: str | None) -> None:
    """Refuse a text option the ledger cannot store (a NUL or a surrogate, as from undecodable argv)."""
    for name, value in (
        ("queue", options.queue),
        ("idempotency key", key),
        ("submitted_by", options.submitted_by),
        ("schedule name", options.schedule_name),
    ):
        if value is not None:
            problem = jsonsafe.unstorable(value, root=name)
            if problem is not None:
                raise InvalidJobOptions(problem)


def _existing(found: duplicates.Existing) -> JobId:
    return JobId(found.id, duplicate=True, reason=found.reason)


def _publishable(row: ledger.NewJob) -> ledger.Published:
    return ledger.Published(row.id, row.kind, row.queue, row.priority, row.payload, row.payload_json)


def _forget(session: Session) -> None:
    session.info.pop("jobs.pending", None)


def _due(delay: float | timedelta | None, at: datetime | None) -> datetime | None:
    if delay is not None and at is not None:
        raise InvalidJobOptions("give a delay or a time (--delay or --at), not both")
    now = datetime.now(UTC)
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise InvalidJobOptions("a delay cannot be negative")
        return now + timedelta(seconds=seconds) if seconds > 0 else None
    if at is not None:
        if at.tzinfo is None:
            raise InvalidJobOptions("a time must include its UTC offset, like 2026-01-31T09:00:00+01:00")
        return at if at > now else None
    return None


_default: Producer | None = None


def _producer() -> Producer:
    global _default  # noqa: PLW0603 - one lazily built producer per process
    if _default is None:
        _default = Producer()
    return _default


def submit(kind: str, payload: Mapping[str, Any] | None = None, **options: Any) -> JobId:
    """Submit one job with the process-wide settings; see ``Producer.submit``."""
    return _producer().submit(kind, payload, **options)


def submit_many(kind: str, payloads: Iterable[Mapping[str, Any]], **options: Any) -> list[JobId]:
    """Submit many jobs with the process-wide settings; see ``Producer.submit_many``."""
    return _producer().submit_many(kind, payloads, **options)
