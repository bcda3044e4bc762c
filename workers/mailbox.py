"""A batched worker process answers while a body runs: remote control and heartbeats in threads.

A batched worker process (``jobs worker -P batched``) runs its bodies in the consumer's own
thread (``-P solo``), where Celery also answers remote control and sends its event
heartbeats. Left there, a body of a minute would leave ``jobs health worker`` (a ping), the
``celery inspect`` commands and ``jobs workers`` without an answer for that minute, and
Flower would show the worker offline after a few seconds. So in such a process
(``Consumer``, chosen by ``workers.app``):

- **Remote control** (``Control``) has a second listener, on its own connection, in its own
  thread: it answers the commands that only read (Celery's ``inspect`` commands: ``ping``,
  ``stats``, ``active``, ``active_queues`` ...) and those that only set a flag
  (``enable_events``, ``disable_events``, ``heartbeat``, ``jobs_refresh_pauses``), at once.
  Celery's own listener, in the consumer's thread, answers every other command, as before:
  those change the consumer (``add_consumer``, ``cancel_consumer``, ``revoke``, ``shutdown``,
  ``rate_limit`` ...) and run between two bodies. Each listener ignores the other's commands,
  so every command is answered once.
- **Event heartbeats** (``Heart``) are sent by a timer thread, so Flower keeps listing the
  worker through a long body.
- **The running body** is listed by ``inspect active`` (``running``), so ``jobs workers``
  shows it, and counted in the heartbeats' ``active``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from celery.utils import timer2
from celery.utils.sysinfo import load_average
from celery.worker import control as celery_commands
from celery.worker import heartbeat
from celery.worker import state as worker_state
from celery.worker.consumer import control as celery_control
from celery.worker.consumer import heart as celery_heart
from celery.worker.control import Panel, inspect_command
from celery.worker.pidbox import gPidbox
from kombu import pidbox

from workers.consumer import Consumer as JobsConsumer
from workers.pauses import REFRESH_COMMAND

if TYPE_CHECKING:
    from workers.recording import Received

__all__ = [
    "HERE",
    "RUNNING",
    "Consumer",
    "Control",
    "Heart",
    "Node",
    "active",
    "answered_in_thread",
    "running",
]

log = logging.getLogger("jobs.worker")

# Subclassed below; celery-types declares neither their private parts nor the steps' settings.
_KombuNode: Any = pidbox.Node
_GreenPidbox: Any = gPidbox
_ControlStep: Any = celery_control.Control
_HeartStep: Any = celery_heart.Heart
_Blueprint: Any = JobsConsumer.Blueprint
_CeleryHeartbeat: Any = heartbeat.Heart
_celery_active: Any = getattr(celery_commands, "active")  # noqa: B009

#: Control commands (besides every ``inspect`` command) the listening thread runs itself: each
#: only sets a flag or sends an event, through objects that take calls from any thread.
HERE = frozenset({"enable_events", "disable_events", "heartbeat", REFRESH_COMMAND})
#: Seconds the listening thread waits for a command before it looks whether it must stop.
LISTEN_FOR = 0.25
#: Seconds between two tries at the broker when the listening thread lost its connection.
RECONNECT_PAUSE = 1.0


def answered_in_thread(method: str) -> bool:
    """Whether the listening thread answers ``method`` (the consumer's thread answers the rest)."""
    meta = Panel.meta.get(method)
    return method in HERE or (meta is not None and meta.type == "inspect")


class Node(_KombuNode):  # type: ignore[misc]
    """A mailbox node that runs only the commands ``wanted`` says are its own and ignores the
    others: the process's other node answers them."""

    def __init__(self, *args: Any, wanted: Callable[[str], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wanted = wanted

    @classmethod
    def like(cls, node: Any, wanted: Callable[[str], bool]) -> Node:
        return cls(
            node.hostname, state=node.state, handlers=node.handlers, mailbox=node.mailbox, wanted=wanted
        )

    def dispatch(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self.wanted(method):
            return None
        return super().dispatch(method, *args, **kwargs)


class ThreadedPidbox(_GreenPidbox):  # type: ignore[misc]
    """Celery's mailbox for green pools (its own connection and loop), in a real thread, for the
    commands that only read or set a flag."""

    def __init__(self, c: Any) -> None:
        super().__init__(c)
        self.node: Node = Node.like(self.node, answered_in_thread)
        # Commands answered here read the active requests while the consumer's thread changes them.
        self.node.state.tset = set

    def start(self, c: Any) -> None:
        self._node_shutdown = threading.Event()
        self._node_stopped = threading.Event()
        threading.Thread(target=self.loop, args=(c,), name="jobs-remote-control", daemon=True).start()

    def loop(self, c: Any) -> None:
        shutdown, stopped = self._node_shutdown, self._node_stopped
        resets = self._resets
        try:
            while not shutdown.is_set() and c.connection:
                try:
                    with c.connection_for_read() as connection:
                        self._do_reset(c, connection)
                        while not shutdown.is_set() and c.connection:
                            if resets < self._resets:
                                resets = self._resets
                                self._do_reset(c, connection)
                            with contextlib.suppress(socket.timeout):
                                connection.drain_events(timeout=LISTEN_FOR)
                except Exception as error:  # the broker went away: the consumer reconnects too
                    log.warning("remote control: %s; listening again in %.0f s", error, RECONNECT_PAUSE)
                    shutdown.wait(RECONNECT_PAUSE)
        finally:
            with contextlib.suppress(Exception):
                self._close_channel(c)
            stopped.set()


class Control(_ControlStep):  # type: ignore[misc]
    """Celery's remote-control step with two listeners: Celery's own, in the consumer's thread,
    for the commands that change the consumer, and ``ThreadedPidbox`` for the others."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.box.node = Node.like(self.box.node, lambda method: not answered_in_thread(method))
        self.listener = ThreadedPidbox(c)
        # Celery's step binds start/stop/shutdown to its one mailbox in __init__.
        self.start, self.stop, self.shutdown = self._start, self._stop, self._shutdown

    def _start(self, c: Any) -> None:
        self.box.start(c)
        self.listener.start(c)

    def _stop(self, c: Any) -> None:
        self.listener.stop(c)
        self.box.stop(c)

    def _shutdown(self, c: Any) -> None:
        self.listener.shutdown(c)
        self.box.shutdown(c)


class Heart(_HeartStep):  # type: ignore[misc]
    """Celery's event-heartbeat step, on a timer thread of its own."""

    timer: timer2.Timer | None = None

    def start(self, c: Any) -> None:
        self.timer = timer2.Timer()
        c.heart = _Heartbeat(self.timer, c.event_dispatcher, self.heartbeat_interval)
        c.heart.start()

    def stop(self, c: Any) -> None:
        super().stop(c)
        if self.timer is not None:
            self.timer.stop()
            self.timer = None

    shutdown = stop


_REPLACED = {
    "celery.worker.consumer.control:Control": f"{__name__}:Control",
    "celery.worker.consumer.heart:Heart": f"{__name__}:Heart",
}


class Consumer(JobsConsumer):
    """The platform's consumer with remote control and heartbeats off the consumer's thread."""

    class Blueprint(_Blueprint):  # type: ignore[misc]
        default_steps: ClassVar[list[str]] = [_REPLACED.get(step, step) for step in _Blueprint.default_steps]


class _Running:
    """A batched job's body, as ``inspect active`` lists it."""

    __slots__ = ("args", "delivery_info", "hostname", "id", "kwargs", "name", "time_start")

    def __init__(self, item: Received, hostname: str) -> None:
        headers = item.message.headers if isinstance(item.message.headers, dict) else {}
        self.id = str(item.job_id)
        self.name = item.task.name
        self.args = headers.get("argsrepr") or "()"
        self.kwargs = headers.get("kwargsrepr") or "{}"
        self.hostname = hostname
        self.delivery_info = item.message.delivery_info
        self.time_start = time.time()

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "args": self.args,
            "kwargs": self.kwargs,
            "type": self.name,
            "hostname": self.hostname,
            "time_start": self.time_start,
            "acknowledged": False,
            "delivery_info": self.delivery_info,
            "worker_pid": os.getpid(),
        }


#: The batched bodies running in this process (one at most), by job id. Not Celery's
#: ``active_requests``: Celery's shutdown and reconnection treat those as its own requests.
RUNNING: dict[str, _Running] = {}
#: Where else bodies run that ``inspect active`` lists: the pool processes of ``jobs worker
#: --batches`` (``workers.pool_batches``), as ``(message, pid, started)`` triples.
ELSEWHERE: list[Callable[[], list[tuple[Received, int, float]]]] = []


def describe(item: Received, pid: int, started: float, hostname: str) -> dict[str, Any]:
    """A body running in another process (``pid``), as ``inspect active`` lists it."""
    entry = _Running(item, hostname)
    entry.time_start = started
    return {**entry.info(), "worker_pid": pid}


@contextlib.contextmanager
def running(item: Received, hostname: str) -> Iterator[None]:
    """List the body as active (``inspect active``, heartbeats) while it runs, and count it as
    Celery counts the tasks it ran (``inspect stats``, heartbeats' ``processed``)."""
    entry = _Running(item, hostname)
    RUNNING[entry.id] = entry
    worker_state.total_count[entry.name] += 1
    worker_state.all_total_count[0] += 1
    try:
        yield
    finally:
        RUNNING.pop(entry.id, None)


@inspect_command(alias="dump_active")
def active(state: Any, safe: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    """List of tasks currently being executed (Celery's, and a batched process's body)."""
    bodies = [body for source in ELSEWHERE for body in source()]
    elsewhere = [describe(*body, hostname=str(state.hostname)) for body in bodies]
    return [
        *_celery_active(state, safe=safe, **kwargs),
        *(entry.info() for entry in list(RUNNING.values())),
        *elsewhere,
    ]


class _Heartbeat(_CeleryHeartbeat):  # type: ignore[misc]
    """Celery's event heartbeat, counting a batched body among the active tasks."""

    def _send(self, event: str, retry: bool = True) -> Any:
        if self._send_sent_signal is not None:
            self._send_sent_signal(sender=self)
        return self.eventer.send(
            event,
            freq=self.interval,
            active=len(worker_state.active_requests) + len(RUNNING),
            processed=worker_state.all_total_count[0],
            loadavg=load_average(),
            retry=retry,
            **worker_state.SOFTWARE_INFO,
        )
