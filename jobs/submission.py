"""One submission's rules: its options checked, and the new job row it becomes.

Everything a submission must pass before the ledger sees it (``jobs.producer`` then inserts
the row): the payload valid for its kind and storable, within the size limit; priority,
attempts, delay or time, idempotency key and texts the ledger can store; a schedule firing's
name and slot; a unique window's or debounce's content key.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs import ids, jsonsafe, ledger
from jobs.errors import InvalidJobOptions, PayloadTooLarge
from jobs.kinds import Kind
from jobs.limits import content_key
from jobs.settings import Settings

__all__ = ["Options", "Submission", "check_texts", "due", "new_job"]


@dataclass(frozen=True, slots=True)
class Options:
    """The options of one submission (``Producer.submit``'s keywords)."""

    queue: str | None = None
    priority: int | None = None
    delay: float | timedelta | None = None
    at: datetime | None = None
    max_attempts: int | None = None
    submitted_by: str | None = None
    retry_of: uuid.UUID | None = None
    schedule_name: str | None = None
    schedule_slot: datetime | None = None


def new_job(
    settings: Settings,
    kind: Kind,
    payload: Mapping[str, Any],
    options: Options,
    key: str | None,
    *,
    partial: bool = False,
) -> ledger.NewJob:
    """The new job row of one submission. ``partial``: the payload is a workflow step's whose
    inputs fill some fields when it is released (``jobs.workflows``): stored as given, checked
    in full then."""
    return Submission(settings, kind, options, key).new_job(payload, partial=partial)


class Submission:
    """One submission's options, checked once, and the job rows it creates.

    A bulk submit checks its options once and then only each item's payload
    (``new_job``): every job of it shares its queue, priority, attempts and due
    time (its delay counts from the call).
    """

    __slots__ = ("attempts", "key", "kind", "not_before", "options", "priority", "queue", "settings")

    def __init__(self, settings: Settings, kind: Kind, options: Options, key: str | None) -> None:
        priority = kind.priority if options.priority is None else options.priority
        if not 0 <= priority <= 9:
            raise InvalidJobOptions(f"priority {priority} is out of range: use 0 (first) to 9 (last)")
        attempts = options.max_attempts or kind.max_attempts or settings.max_attempts
        if attempts < 1:
            raise InvalidJobOptions("max attempts must be at least 1")
        if key is not None and not 0 < len(key) <= 255:
            raise InvalidJobOptions("an idempotency key must be 1 to 255 characters")
        not_before = due(options.delay, options.at)
        debounced = kind.debounce is not None and options.retry_of is None
        if debounced and (options.delay is not None or options.at is not None):
            assert kind.debounce is not None
            raise InvalidJobOptions(
                f"kind {kind.name} debounces: its job runs {kind.debounce.period:g}s after the last "
                "submission, so it takes no delay or time"
            )
        if options.schedule_name is not None or options.schedule_slot is not None:
            if options.schedule_name is None or options.schedule_slot is None:
                raise InvalidJobOptions("a schedule firing needs both its schedule name and its slot")
            if options.schedule_slot.tzinfo is None:
                raise InvalidJobOptions("a schedule slot must include its UTC offset")
        self.settings = settings
        self.kind = kind
        self.options = options
        self.key = key
        self.queue = options.queue or kind.queue or settings.default_queue
        self.priority = priority
        self.attempts = attempts
        self.not_before = not_before

    def new_job(self, payload: Mapping[str, Any], *, partial: bool = False) -> ledger.NewJob:
        """The new job row for one payload (``InvalidPayload``, ``PayloadTooLarge``: nothing made)."""
        kind, options = self.kind, self.options
        data = dict(payload) if partial else kind.dump(kind.validate(payload))
        data_json = kind.to_json(data)
        size = len(data_json)  # ASCII (json.dumps escapes the rest): one byte per character
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload of {size} bytes is over the limit of {self.settings.max_payload_bytes} "
                "bytes (JOBS_MAX_PAYLOAD_BYTES); store large data elsewhere and pass its id"
            )
        not_before = self.not_before
        unique_key = debounce_key = None
        if kind.unique is not None:
            unique_key = content_key(kind.name, data, kind.unique.paths)
        if kind.debounce is not None:
            debounce_key = content_key(kind.name, data, kind.debounce.paths)
            if options.retry_of is None:
                # Replaced by the server's clock when inserted (jobs.duplicates.collapse_or_insert).
                not_before = datetime.now(UTC) + timedelta(seconds=kind.debounce.period)
        return ledger.NewJob(
            id=ids.new(),
            kind=kind.name,
            queue=self.queue,
            priority=self.priority,
            payload=data,
            payload_json=data_json,
            state="scheduled" if not_before is not None else "queued",
            max_attempts=self.attempts,
            not_before=not_before,
            idempotency_key=self.key,
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


def check_texts(options: Options, key: str | None) -> None:
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


def due(delay: float | timedelta | None, at: datetime | None) -> datetime | None:
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
