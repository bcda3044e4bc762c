"""The worker's presence in the roster: enlist at start, heartbeat while alive, retire at shutdown.

``Presence`` is a step of the worker's consumer (``install`` adds it). When
the consumer first starts it enlists the worker in the ledger's roster
(``jobs.roster``): its node name, host, pid, the queues it was started with,
its pool, and every kind it implements with the kind's version. A thread then
writes a heartbeat every ``JOBS_WORKER_HEARTBEAT`` seconds, enlisting again if
its row went missing; when the worker shuts down (after its running jobs
finished or were handed back) it marks itself stopped.

If PostgreSQL is unreachable the worker keeps running and the thread keeps
trying: the roster then counts the worker as dead after three heartbeats,
which only delays the relay of jobs handed back for its kinds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Celery, bootsteps

from jobs import db, limit_store, roster
from jobs.errors import JobsError
from jobs.kinds import Registry
from jobs.settings import Settings, get_settings

__all__ = ["Presence", "install", "member_of"]

log = logging.getLogger("jobs.worker.presence")


def member_of(c: Any, registry: Registry, queues: list[str]) -> roster.Member:
    """This worker as the roster records it."""
    pool = c.controller.pool if c.controller is not None else None
    if get_settings().worker_batched:  # one process of a `jobs worker -P batched` (jobs.fleet groups them)
        pool_name: str | None = "batched"
    else:
        pool_name = type(pool).__module__.rsplit(".", 1)[-1] if pool is not None else None
    return roster.Member(
        name=str(c.hostname),
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=tuple(sorted(queues)),
        kinds={kind.name: kind.advertised_version for kind in registry if kind.body is not None},
        pool=pool_name,
        concurrency=getattr(c.controller, "concurrency", None) if c.controller is not None else None,
    )


class Presence(bootsteps.StartStopStep):
    """Keeps this worker's row in the roster alive."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "presence"

    #: Set by ``install``: the kinds this worker implements.
    registry: Registry | None = None

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.settings: Settings = get_settings()
        self.member: roster.Member | None = None
        self.enlisted = False
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.failing = False
        c.presence = self

    def start(self, c: Any) -> None:
        if self.member is None:
            assert self.registry is not None, "install() sets the registry"
            self.member = member_of(c, self.registry, [queue.name for queue in c.task_consumer.queues])
            self.beat()  # enlist before the first message is taken, when the ledger answers
            self.thread = threading.Thread(target=self._loop, name="jobs-presence", daemon=True)
            self.thread.start()

    def shutdown(self, c: Any) -> None:
        self.stopping.set()
        if self.member is None:
            return
        try:
            with db.autocommit(self.settings) as conn:
                roster.retire(conn, self.member.name)
            log.info("%s left the roster", self.member.name)
        except JobsError as error:
            log.warning("could not mark %s stopped in the roster (%s)", self.member.name, error)

    def _loop(self) -> None:
        while not self.stopping.wait(self.settings.worker_heartbeat):
            self.beat()

    def beat(self) -> None:
        """One heartbeat (or the enlistment it needs); logs a lost ledger once per outage."""
        assert self.member is not None
        try:
            with db.autocommit(self.settings) as conn:
                if not self.enlisted or not roster.heartbeat(conn, self.member.name):
                    roster.enlist(conn, self.member)
                    if not self.enlisted:
                        # The limits its kinds declare in code reach the ledger with the worker.
                        assert self.registry is not None
                        limit_store.ensure_declared(
                            conn, [lim for kind in self.registry for lim in kind.limits]
                        )
                        log.info(
                            "%s enlisted in the roster: queues %s, %d kind(s)",
                            self.member.name,
                            ", ".join(self.member.queues),
                            len(self.member.kinds),
                        )
                    self.enlisted = True
        except Exception as error:  # the heartbeat must never take the worker down
            if not self.failing:
                log.warning("%s: no heartbeat written to the roster (%s); retrying", self.member.name, error)
            self.failing = True
            return
        if self.failing:
            log.info("%s's heartbeat reaches the roster again", self.member.name)
        self.failing = False


def install(app: Celery, registry: Registry) -> None:
    """Add the step to the worker's consumer."""
    Presence.registry = registry
    app.steps["consumer"].add(Presence)
