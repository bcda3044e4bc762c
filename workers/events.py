"""Task events only while someone listens (``JOBS_WORKER_TASK_EVENTS=auto``, the default).

Celery's task events (``task-received``, ``task-started``, ``task-succeeded``,
...) are what Flower shows; each is a Redis ``PUBLISH`` from the worker's main
process, three or more per job, and they cost bare Celery's main process about
a third of its time per message (docs/performance.md). Nobody needs them when
no event consumer runs, and every consumer that wants them asks for them:
Flower sends the ``enable_events`` control command every 5 seconds, and
``celery control enable_events`` does it by hand.

So in ``auto`` mode a worker starts without task events (its ``worker-*``
heartbeat events, which let Flower list it, are always sent), turns them on
when asked, and turns them off again once nobody has asked for ``LINGER``
seconds. ``jobs flower`` also asks once when it starts, so workers already
running send events from the start; a worker started after Flower sends them
from Flower's next ask, at most 5 seconds later. ``on`` sends them always (as
the platform did before, and as ``jobs dev`` does so its demo job shows in
Flower at once); ``off`` never, unless asked (Celery's default).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, bootsteps
from celery.worker import control

from jobs.settings import get_settings

__all__ = ["LINGER", "ListenedEvents", "install"]

log = logging.getLogger("jobs.worker.events")

#: Seconds task events stay on after the last ``enable_events`` (Flower asks every 5 s).
LINGER = 30.0
#: Seconds between two looks at whether anybody still asks.
CHECK_EVERY = 5.0

# celery-types does not declare the control commands' functions.
_celery_enable_events: Any = getattr(control, "enable_events")  # noqa: B009


@control.control_command(name="enable_events")
def enable_events(state: Any) -> Any:
    """Celery's ``enable_events``, remembered: a worker in ``auto`` mode keeps task events on
    while someone keeps asking."""
    step = getattr(state.consumer, "listened_events", None)
    if step is not None:
        step.asked()
    return _celery_enable_events(state)


class ListenedEvents(bootsteps.StartStopStep):
    """Turns task events off in a worker nobody has asked for them for ``LINGER`` seconds."""

    requires = ("celery.worker.consumer.events:Events",)
    label = "listened events"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.asked_at = float("-inf")
        self.timer: Any = None
        c.listened_events = self

    def asked(self) -> None:
        self.asked_at = time.monotonic()

    def start(self, c: Any) -> None:
        if self.timer is None and c.timer is not None:
            self.timer = c.timer.call_repeatedly(CHECK_EVERY, self.check, (c,))

    def check(self, c: Any) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None or not dispatcher.groups or "task" not in dispatcher.groups:
            return
        if time.monotonic() - self.asked_at > LINGER:
            dispatcher.groups.discard("task")
            log.info("task events off: no event consumer (Flower) asked for them in %.0f s", LINGER)

    def shutdown(self, c: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def install(app: Celery) -> None:
    """Add the step to the worker's consumer when task events follow their listeners."""
    if get_settings().worker_task_events == "auto":
        app.steps["consumer"].add(ListenedEvents)
