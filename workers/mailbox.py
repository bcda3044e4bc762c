"""A batched worker process answers while a body runs: remote control and heartbeats in threads.

A batched worker process (``jobs worker -P batched``) runs its bodies in the consumer's own
thread (``-P solo``), where Celery also answers remote control and sends its event
heartbeats. Left there, a body of a minute would leave ``jobs health worker`` (a ping), the
``celery inspect`` commands and ``jobs workers`` without an answer for that minute, and
Flower would show the worker offline after a few seconds. So in such a process
(``Consumer``, chosen by ``workers.app``):

- **Remote control** (``Control``) listens on its own connection, in its own thread.
  Commands that only read (Celery's ``inspect`` commands: ``ping``, ``stats``, ``active``,
  ``active_queues`` ...) and the ones that only set a flag (``enable_events``,
  ``disable_events``, ``heartbeat``, ``jobs_refresh_pauses``) are answered there at once.
  Every other command changes the consumer (``add_consumer``, ``cancel_consumer``,
  ``revoke``, ``shutdown``, ``rate_limit`` ...): it runs in the consumer's thread, between
  two bodies, as before, and its reply goes out from the listening thread when it has run.
- **Event heartbeats** (``Heart``) are sent by a timer thread, so Flower keeps listing the
  worker through a long body.
- **The running body** is listed by ``inspect active`` (``running``), so ``jobs workers``
  shows it, and counted in the heartbeats' ``active``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterator
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

__all__ = ["HERE", "RUNNING", "Consumer", "Control", "Heart", "Node", "active", "running"]

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
#: Seconds the listening thread waits for a command before it sends the replies of the ones
#: the consumer's thread ran meanwhile.
REPLY_EVERY = 0.1
#: Seconds between two tries at the broker when the listening thread lost its connection.
RECONNECT_PAUSE = 1.0


def _answered_here(method: str) -> bool:
    meta = Panel.meta.get(method)
    return method in HERE or (meta is not None and meta.type == "inspect")


class Node(_KombuNode):  # type: ignore[misc]
    """A mailbox node that runs the commands changing the consumer in the consumer's thread."""

    def __init__(self, *args: Any, call_soon: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.call_soon = call_soon
        self.replies: queue.SimpleQueue[tuple[Any, dict[str, str], str | None]] = queue.SimpleQueue()

    def dispatch(
        self,
        method: str,
        arguments: dict[str, Any] | None = None,
        reply_to: dict[str, str] | None = None,
        ticket: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if _answered_here(method):
            return super().dispatch(method, arguments, reply_to, ticket, **kwargs)

        def run() -> None:  # in the consumer's thread; SystemExit (shutdown) stops the worker
            try:
                reply = self.handle(method, arguments)
            except Exception as error:
                log.error("control command %s failed: %r", method, error, exc_info=True)
                reply = {"error": repr(error)}
            if reply_to:
                self.replies.put(({self.hostname: reply}, reply_to, ticket))

        self.call_soon(run)
        return None

    def send_replies(self) -> None:
        """Send the replies of the commands the consumer's thread ran (in the listening thread)."""
        while True:
            try:
                data, reply_to, ticket = self.replies.get_nowait()
            except queue.Empty:
                return
            exchange, routing_key = reply_to["exchange"], reply_to["routing_key"]
            self.reply(data, exchange=exchange, routing_key=routing_key, ticket=ticket)


class ThreadedPidbox(_GreenPidbox):  # type: ignore[misc]
    """Celery's mailbox for green pools (its own connection and loop), in a real thread."""

    def __init__(self, c: Any) -> None:
        super().__init__(c)
        celery_node: Any = self.node
        self.node: Node = Node(
            celery_node.hostname,
            state=celery_node.state,
            handlers=celery_node.handlers,
            mailbox=celery_node.mailbox,
            call_soon=c.call_soon,
        )
        # Commands answered here read the active requests while the consumer's thread changes them.
        self.node.state.tset = set
        self.thread: threading.Thread | None = None

    def start(self, c: Any) -> None:
        self._node_shutdown = threading.Event()
        self._node_stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, args=(c,), name="jobs-remote-control", daemon=True)
        self.thread.start()

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
                            self.node.send_replies()
                            with contextlib.suppress(socket.timeout):
                                connection.drain_events(timeout=REPLY_EVERY)
                except Exception as error:  # the broker went away: the consumer reconnects too
                    log.warning("remote control: %s; listening again in %.0f s", error, RECONNECT_PAUSE)
                    shutdown.wait(RECONNECT_PAUSE)
        finally:
            with contextlib.suppress(Exception):
                self._close_channel(c)
            stopped.set()


class Control(_ControlStep):  # type: ignore[misc]
    """Celery's remote-control step, listening in its own thread."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.box = ThreadedPidbox(c)
        self.start = self.box.start
        self.stop = self.box.stop
        self.shutdown = self.box.shutdown


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
            "worker_pid": None,
        }


#: The batched bodies running in this process (one at most), by job id. Not Celery's
#: ``active_requests``: Celery's shutdown and reconnection treat those as its own requests.
RUNNING: dict[str, _Running] = {}


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
    return [*_celery_active(state, safe=safe, **kwargs), *(entry.info() for entry in list(RUNNING.values()))]


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
