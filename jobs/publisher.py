"""Putting committed jobs on the broker: one Celery message per job, task id = job id.

Messages are built by ``jobs.wire`` and pushed to Redis in pipelines.

Publishing always follows the ledger commit. If Redis cannot take a message,
the job stays ``queued`` with no ``published_at`` and the leader's relay
publishes it later; a duplicate publish is absorbed by the worker's claim.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence

from kombu.utils.url import maybe_sanitize_url
from redis.exceptions import RedisError

from jobs import db, ledger, wire
from jobs.errors import BrokerUnavailable, JobsError
from jobs.kinds import Registry
from jobs.settings import Settings

__all__ = ["publish", "publish_and_mark", "publish_batches"]

log = logging.getLogger("jobs.publisher")

BROKER_ERRORS = (RedisError, OSError)


def publish(settings: Settings, registry: Registry, items: Sequence[ledger.Published]) -> list[uuid.UUID]:
    """Send each job's message; returns the ids sent before any failure, raises if none could be."""
    if not items:
        return []
    messages = [
        (
            wire.queue_key(item.queue, item.priority),
            wire.encode(
                item.id,
                item.kind,
                item.queue,
                item.priority,
                json.dumps(item.payload),
                _shown(registry, item),
            ),
        )
        for item in items
    ]
    try:
        sent = wire.push(settings.broker_url, messages, timeout=settings.publish_timeout)
    except BROKER_ERRORS as error:
        raise BrokerUnavailable(f"Redis is unreachable at {_safe(settings.broker_url)}: {error}") from error
    if sent < len(items):
        log.warning("broker failed after %d of %d messages; the relay publishes the rest", sent, len(items))
    return [item.id for item in items[:sent]]


def publish_and_mark(
    settings: Settings, registry: Registry, items: Sequence[ledger.Published]
) -> list[uuid.UUID]:
    """Publish, then stamp ``published_at`` on what went out (best effort: the relay covers misses)."""
    sent = publish(settings, registry, items)
    try:
        with db.autocommit(settings) as conn:
            ledger.mark_published(conn, sent)
    except JobsError as error:
        log.warning("published %d jobs but could not stamp them: %s", len(sent), error)
    return sent


def publish_batches(
    settings: Settings,
    registry: Registry,
    items: Sequence[ledger.Published],
    *,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Publish many jobs while holding a share lock on their rows; returns how many went out.

    Publishing a large batch takes longer than the relay's grace period; the
    lock (``FOR KEY SHARE``, which workers' claims do not conflict with) makes
    the relay skip these rows instead of publishing them a second time.
    """
    sent = 0
    try:
        with db.transaction(settings) as conn:
            ledger.lock_for_publish(conn, [item.id for item in items])
            for start in range(0, len(items), batch):
                try:
                    ids = publish(settings, registry, items[start : start + batch])
                except BrokerUnavailable as error:
                    log.warning("%s; %d job(s) wait in the ledger for the relay", error, len(items) - sent)
                    break
                ledger.mark_published(conn, ids)
                sent += len(ids)
                if progress is not None:
                    progress(sent)
                if len(ids) < len(items[start : start + batch]):
                    break
    except JobsError as error:
        log.warning("published %d jobs but could not stamp them: %s", sent, error)
    return sent


def _shown(registry: Registry, item: ledger.Published) -> str:
    if item.kind in registry:
        declared = registry.get(item.kind)
        if declared.has_secrets:
            return repr(declared.display(item.payload))
    return repr(item.payload)


def _safe(url: str) -> str:
    return str(maybe_sanitize_url(url))
