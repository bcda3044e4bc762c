"""Putting committed jobs on the broker: one Celery message per job, task id = job id.

Publishing always follows the ledger commit. If Redis cannot take a message,
the job stays ``queued`` with no ``published_at`` and the leader's relay
publishes it later; a duplicate publish is absorbed by the worker's claim.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from jobs import db, ledger
from jobs.errors import BrokerUnavailable, JobsError
from jobs.kinds import Registry
from jobs.settings import Settings

__all__ = ["publish", "publish_and_mark"]

log = logging.getLogger("jobs.publisher")

BROKER_ERRORS = (KombuOperationalError, RedisError, OSError)


def publish(app: Celery, registry: Registry, items: Sequence[ledger.Published]) -> list[uuid.UUID]:
    """Send each job's message; returns the ids sent before any failure, raises if none could be."""
    sent: list[uuid.UUID] = []
    if not items:
        return sent
    try:
        with app.producer_or_acquire() as producer:
            for item in items:
                app.send_task(
                    item.kind,
                    kwargs=item.payload,
                    task_id=str(item.id),
                    queue=item.queue,
                    priority=item.priority,
                    kwargsrepr=_shown(registry, item),
                    producer=producer,
                    retry=False,
                )
                sent.append(item.id)
    except BROKER_ERRORS as error:
        if not sent:
            raise BrokerUnavailable(f"Redis is unreachable at {_safe(app)}: {error}") from error
        log.warning("broker failed after %d of %d messages: %s", len(sent), len(items), error)
    return sent


def publish_and_mark(
    settings: Settings, app: Celery, registry: Registry, items: Sequence[ledger.Published]
) -> list[uuid.UUID]:
    """Publish, then stamp ``published_at`` on what went out (best effort: the relay covers misses)."""
    sent = publish(app, registry, items)
    try:
        with db.transaction(settings) as conn:
            ledger.mark_published(conn, sent)
    except JobsError as error:
        log.warning("published %d jobs but could not stamp them: %s", len(sent), error)
    return sent


def _shown(registry: Registry, item: ledger.Published) -> str:
    if item.kind in registry:
        declared = registry.get(item.kind)
        if declared.has_secrets:
            return repr(declared.display(item.payload))
    return repr(item.payload)


def _safe(app: Celery) -> str:
    return str(app.connection_for_write().as_uri())
