"""Putting committed jobs on the broker: one Celery message per job, task id = job id.

Messages are built by ``jobs.wire`` and pushed to Redis in pipelines. A row
is marked published (``published_at``) in the same statement that creates or
stages it, before its message is sent: a failed send clears the mark for the
relay, and a job whose sender died in between is found by the leader's
republish sweep. No extra round trip per job, and no job without a message.

Publishing always follows the ledger commit. If Redis cannot take a message,
the job stays ``queued`` with no ``published_at`` and the leader's relay
publishes it later; a duplicate publish is absorbed by the worker's claim.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from jobs import db, ledger, wire
from jobs.errors import BrokerUnavailable, JobsError
from jobs.kinds import Kind, Registry
from jobs.settings import Settings

__all__ = ["Publishable", "publish", "publish_committed"]

log = logging.getLogger("jobs.publisher")


class Publishable(Protocol):
    """A committed job to put on the broker: a ``ledger.Published`` or a ``ledger.NewJob``."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def kind(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def payload_json(self) -> str | None: ...


def publish(settings: Settings, registry: Registry, items: Sequence[Publishable]) -> list[uuid.UUID]:
    """Send each job's message; returns the ids sent before any failure, raises if none could be."""
    if not items:
        return []
    messages = []
    where: tuple[str, str, int] | None = None
    key, envelope, masking = "", None, None
    for item in items:
        if where != (item.kind, item.queue, item.priority):  # a bulk submit's are all alike
            where = (item.kind, item.queue, item.priority)
            key = wire.queue_key(item.queue, item.priority)
            envelope = wire.envelope(item.kind, item.queue, item.priority)
            masking = _masking(registry, item.kind)
        assert envelope is not None
        text = json.dumps(item.payload) if item.payload_json is None else item.payload_json
        # What people see of the payload (Flower's args): secret fields masked.
        shown = repr(item.payload if masking is None else masking.display(item.payload))
        messages.append((key, envelope.encode(str(item.id), text, shown)))
    try:
        sent = wire.push(settings.broker_url, messages, timeout=settings.publish_timeout)
    except wire.broker_errors() as error:
        raise BrokerUnavailable(f"Redis is unreachable at {_safe(settings.broker_url)}: {error}") from error
    if sent < len(items):
        log.warning("broker failed after %d of %d messages; the relay publishes the rest", sent, len(items))
    return [item.id for item in items[:sent]]


def publish_committed(
    settings: Settings,
    registry: Registry,
    items: Sequence[Publishable],
    *,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Publish jobs whose rows are committed and marked published; returns how many went out.

    What the broker did not take is marked unpublished again, so the relay
    publishes it when Redis returns.
    """
    sent = 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        try:
            ids = publish(settings, registry, chunk)
        except BrokerUnavailable as error:
            log.warning("%s; %d job(s) wait in the ledger for the relay", error, len(items) - sent)
            break
        sent += len(ids)
        if progress is not None:
            progress(sent)
        if len(ids) < len(chunk):
            break
    if sent < len(items):
        try:
            with db.autocommit(settings) as conn:
                ledger.mark_unpublished(conn, [item.id for item in items[sent:]])
        except JobsError as error:  # the leader's republish sweep still finds them
            log.warning("could not mark %d unsent job(s) for the relay: %s", len(items) - sent, error)
    return sent


def _masking(registry: Registry, kind: str) -> Kind | None:
    """The kind whose secret fields the shown payload masks, or ``None`` when nothing is masked."""
    found = registry.get(kind) if kind in registry else None
    return found if found is not None and found.has_secrets else None


def _safe(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url  # here: only error messages need kombu (0.05 s to load)

    return str(maybe_sanitize_url(url))
