"""Re-drive after broker loss: when Redis lost its data, publish every queued job again.

Redis is only the transport; the ledger knows which jobs wait for a worker.
The leader keeps a sentinel key (``jobs.epoch``) in the broker's db and checks
it every tick. A missing key means the data went away: Redis restarted
without persistence, someone ran FLUSHALL or FLUSHDB, or memory pressure
evicted keys (the check uses ``EXISTS``, which does not refresh the key's
last access, so under an ``allkeys-lru`` policy the sentinel is among the
first keys evicted). The leader then publishes again every ``queued`` job in
batches and sets the key again: the last step, so a leader that dies midway
leaves the key missing and its successor starts over.

A job whose message survived gets a duplicate; the worker's claim absorbs it
(one run per attempt). Running jobs need nothing from here: if Redis lost
their unacknowledged message and their worker then dies, the rescuer finds the
expired lease.

The key is missing too when the platform meets a broker for the first time.
The ledger remembers every broker it has met (``broker_epochs``, keyed by the
broker's address without credentials), so a first meeting is told apart: when
the ledger has met no broker at all (a new platform), the epoch is
established quietly and nothing is re-driven (the queued jobs' messages went
to this very broker). A broker the ledger has not met while it has met
others (the platform moved to a new Redis) is treated as a loss: its queue is
empty of the ledger's queued jobs, which are published again, with a warning.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs import db, ledger, publisher, wire
from jobs.schema import broker_epochs, jobs

if TYPE_CHECKING:
    import redis

    from beat.context import Maintenance

__all__ = ["SENTINEL", "Redrive"]

log = logging.getLogger("jobs.beat")

SENTINEL = "jobs.epoch"
BATCH = 1000


@dataclass
class Redrive:
    """The maintenance loop that notices broker data loss and publishes the queue again."""

    interval: float
    batch: int = BATCH
    name: str = "redrive"
    _client: redis.Redis | None = field(default=None, repr=False)
    _unreachable: bool = field(default=False, repr=False)

    def run(self, env: Maintenance) -> int:
        client = self._connect(env)
        try:
            present = bool(client.exists(SENTINEL))
        except wire.broker_errors() as error:
            if not self._unreachable:  # one line per outage, not one per tick
                log.warning(
                    "redrive: Redis is unreachable (%s); checking again every %gs", error, self.interval
                )
                self._unreachable = True
            return 0
        if self._unreachable:
            log.info("redrive: Redis is reachable again")
            self._unreachable = False
        if present:
            return 0
        broker = _where(env.settings.broker_url)
        with db.autocommit(env.settings) as conn:
            known = set(conn.execute(sa.select(broker_epochs.c.broker)).scalars())
        if not known:
            if self._establish(env, client, broker):
                log.info("redrive: first meeting with the broker %s; its epoch is established", broker)
            return 0
        started = time.monotonic()
        sent, complete = self._republish_queued(env)
        if not complete:  # the broker failed again: the relay has the rest; the next tick starts over
            log.warning("redrive: the broker failed after %d job(s); trying again next tick", sent)
            return sent
        if not self._establish(env, client, broker):
            return sent
        why = "lost its data" if broker in known else "is new to this ledger"
        log.warning(
            "redrive: the broker %s %s (%s was missing); %d queued job(s) published again in %.2fs",
            broker,
            why,
            SENTINEL,
            sent,
            time.monotonic() - started,
        )
        return sent

    def _establish(self, env: Maintenance, client: redis.Redis, broker: str) -> bool:
        """Set the sentinel (last: a leader dying before it leaves the key missing) and remember it."""
        try:
            client.set(SENTINEL, f"{datetime.now(UTC).isoformat()} {socket.gethostname()}")
        except wire.broker_errors() as error:
            log.warning("redrive: could not set %s (%s); trying again next tick", SENTINEL, error)
            return False
        with db.autocommit(env.settings) as conn:
            conn.execute(
                pg_insert(broker_epochs)
                .values(broker=broker, established_by=socket.gethostname())
                .on_conflict_do_update(
                    index_elements=[broker_epochs.c.broker],
                    set_={"established_at": sa.func.now(), "established_by": socket.gethostname()},
                )
            )
        return True

    def _connect(self, env: Maintenance) -> redis.Redis:
        if self._client is None:
            import redis

            settings = env.settings
            self._client = redis.Redis.from_url(
                settings.broker_url.replace("redis+socket://", "unix://", 1),
                socket_connect_timeout=settings.publish_timeout,
                socket_timeout=max(settings.publish_timeout, 5.0),
                socket_keepalive=True,
            )
        return self._client

    def _republish_queued(self, env: Maintenance) -> tuple[int, bool]:
        """Publish every queued job once, oldest publish first, ``batch`` per statement.

        Returns how many went out, and whether the broker took all of them.
        """
        with db.autocommit(env.settings) as conn:
            waiting = conn.execute(
                sa.select(sa.func.count()).select_from(jobs).where(jobs.c.state == "queued")
            ).scalar_one()
        sent = 0
        # Each batch stamps its jobs published now, so the next batch takes the ones not yet sent;
        # the count bounds the rounds (jobs queued meanwhile were published by their producer).
        for _ in range(math.ceil(waiting / self.batch)):
            with db.autocommit(env.settings) as conn:
                # Paused queues too: their messages went with the rest.
                taken = ledger.republish_stale(conn, older_than=0.0, limit=self.batch, paused_too=True)
            if not taken:
                break
            went = publisher.publish_committed(env.settings, env.registry, taken, batch=self.batch)
            sent += went
            if went < len(taken):
                return sent, False
            if len(taken) < self.batch:
                break
        return sent, True


def _where(url: str) -> str:
    """The broker's address as the ledger remembers it: its URL without credentials."""
    return str(maybe_sanitize_url(url))
