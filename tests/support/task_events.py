"""``TaskEvents``: Celery events as an event consumer (Flower, ``celery events``) receives them.

A test helper: a thread consuming the events exchange with Celery's own
``Receiver``, keeping every event it hears. It does not ask workers for task
events (``enable_events``) itself: a test that wants them asks, as Flower does,
or runs its workers with ``JOBS_WORKER_TASK_EVENTS=on`` (``workers.events``).
"""

from __future__ import annotations

import threading
from typing import Any

from jobs.app import create_app
from jobs.settings import Settings

__all__ = ["TaskEvents"]


class TaskEvents:
    """Celery events received from the moment the context is entered, in ``events``."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.events: list[dict[str, Any]] = []
        self.heard = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._receiver: Any = None

    def _receive(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.heard.set()

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self._receive})
            for _ in self._receiver.consume(limit=None, timeout=None):
                pass

    def of(self, job_id: object) -> list[str]:
        """The types of the task events heard about one job, in order."""
        return [event["type"] for event in list(self.events) if event.get("uuid") == str(job_id)]

    def __enter__(self) -> TaskEvents:
        self._thread.start()
        # Consuming is not yet listening (Redis subscribes on the next read): a first event, say a
        # worker's heartbeat (every 2 s), shows that no task event sent from now on can be missed.
        assert self.heard.wait(30), "no Celery event arrived in 30 s (workers send a heartbeat every 2 s)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)
