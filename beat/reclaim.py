"""Reclaim: messages a lost worker had taken but not started go back on their queues.

With late acknowledgement a worker's messages stay in kombu's ``unacked``
hash in Redis until it acknowledges them: the one it runs, and any it has
received but not yet claimed in the ledger. When the worker is SIGKILLed the
running job comes back through its lease (the rescuer), but a message it had
only received belongs to a job that is still ``queued``, with no lease for the
rescuer to find. Redis itself would hand it out again only after the
visibility timeout (an hour by default), and the republisher after
``JOBS_REPUBLISH_AFTER``.

This loop runs on the rescuer's interval and puts back every message that has
been unacknowledged for longer than its kind's lease (hard time limit +
``JOBS_LEASE_MARGIN``) while its job is still queued (or unknown to the
ledger: a foreign message): the same bound as the lost worker's running job.
A live worker never holds a queued job's message that long (it holds at most
as many messages as it has pool processes, and claims each as it takes it),
so what is put back is a lost worker's; if it were not, the copy would be
absorbed by the claim like any duplicate delivery. The restore is one atomic
step in Redis that loses to a concurrent acknowledgement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jobs import broker, db, ledger, wire
from jobs.kinds import lease_for

if TYPE_CHECKING:
    import redis

    from beat.context import Maintenance

__all__ = ["Reclaimer"]

log = logging.getLogger("jobs.beat")

BATCH = 1000


@dataclass
class Reclaimer:
    """The maintenance loop that puts back the messages lost workers had reserved."""

    interval: float
    name: str = "reclaimer"
    _client: redis.Redis | None = field(default=None, repr=False)

    def run(self, env: Maintenance) -> int:
        settings, registry = env.settings, env.registry
        shortest = min([lease_for(settings, None), *(lease_for(settings, kind) for kind in registry)])
        if self._client is None:
            self._client = broker.client(settings, timeout=settings.publish_timeout)
        try:
            held = broker.held_longer_than(self._client, shortest, limit=BATCH)
        except wire.broker_errors():
            return 0  # Redis is away: the redrive loop says so once
        if not held:
            return 0
        with db.autocommit(settings) as conn:
            states = ledger.states_of(conn, [each.job_id for each in held if each.job_id is not None])
        restored = 0
        for each in held:
            state = states.get(each.job_id) if each.job_id is not None else None
            if state not in (None, "queued"):
                continue  # running (its lease decides), finished, or cancelled: a stale copy
            kind = registry.get(each.kind) if each.kind is not None and each.kind in registry else None
            if each.age < lease_for(settings, kind):
                continue
            try:
                if broker.restore(self._client, each):
                    restored += 1
                    log.warning(
                        "reclaimer: job %s (%s) was taken %.0fs ago by a worker that never started it;"
                        " its message is back on queue %s",
                        each.job_id or "(no job id)",
                        each.kind,
                        each.age,
                        each.routing_key,
                    )
            except wire.broker_errors() as error:
                log.warning("reclaimer: Redis failed (%s); trying again next round", error)
                break
        return restored
