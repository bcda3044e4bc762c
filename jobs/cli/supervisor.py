"""The process supervisor of ``jobs dev``: children in their own process groups, stopped in steps.

A terminal sends Ctrl-C (SIGINT) to its whole foreground process group. Each
child here runs in a process group of its own, so only the supervisor hears
the terminal, and each child receives exactly the signals chosen for it:

1. the first stop request (SIGINT, SIGTERM or SIGHUP) sends every child its
   graceful signal, and waits: as long as it takes for a child without a
   ``grace``, at most ``grace`` seconds for the others;
2. a second request (or SIGQUIT, Ctrl-\\) sends the children that have one
   their ``at_once`` signal, and gives them ``AT_ONCE_GRACE`` seconds;
3. a third request, or a grace that runs out, kills the child's process group.

A child that is never sent a second signal (Flower saving its state) is never
interrupted halfway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import signal

# bandit B404/B603: the supervisor starts the platform's own commands, never a shell or user input.
import subprocess  # nosec B404
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["Child", "Step", "Supervisor"]

#: After the ``at_once`` signal, a child gets this long before it is killed, seconds.
AT_ONCE_GRACE = 15.0


class Step(enum.IntEnum):
    """How far stopping has gone."""

    RUNNING = 0
    GRACEFUL = 1
    AT_ONCE = 2
    KILL = 3


@dataclasses.dataclass
class Child:
    """One supervised process and how to stop it."""

    name: str
    process: subprocess.Popen[bytes]
    graceful: signal.Signals
    at_once: signal.Signals | None = None
    """None: a second request leaves it to finish its graceful stop."""
    grace: float | None = None
    """Seconds between the graceful signal and a kill; None: no limit (until a second request)."""
    deadline: float | None = None
    asked: bool = False
    unexpected: bool = False
    """It exited before it was asked to stop."""
    killed: bool = False

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def send(self, signum: signal.Signals) -> None:
        if self.running:
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL its whole process group (the worker's pool processes too)."""
        if self.running:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):  # it exited between the poll and the kill
                os.killpg(self.process.pid, signal.SIGKILL)


class Supervisor:
    """Starts children, counts stop requests from signals, and applies them one step at a time."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.requested = Step.RUNNING
        self.applied = Step.RUNNING

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        graceful: signal.Signals = signal.SIGTERM,
        at_once: signal.Signals | None = None,
        grace: float | None = None,
    ) -> Child:
        """Start ``argv`` in a new process group, stdin closed (only the supervisor reads the terminal)."""
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, process_group=0)  # nosec B603
        child = Child(name, process, graceful, at_once, grace)
        self.children.append(child)
        return child

    def catch_signals(self) -> None:
        """From now on, SIGINT, SIGTERM and SIGHUP each request the next step; SIGQUIT at least AT_ONCE."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGQUIT, self._on_quit)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = Step(min(self.requested + 1, Step.KILL))

    def _on_quit(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = Step(max(self.requested + 1, Step.AT_ONCE))

    def request(self, step: Step) -> None:
        """Ask for at least ``step`` (a child that exited on its own stops the others gracefully)."""
        self.requested = max(self.requested, step)

    @property
    def stopping(self) -> bool:
        return self.requested > Step.RUNNING

    def advance(self, announce: Callable[[Step], None]) -> None:
        """Carry out the steps requested since the last call, in order, each announced first."""
        while self.applied < self.requested:
            step = Step(self.applied + 1)
            announce(step)
            self._apply(step)
            self.applied = step
        self._kill_overdue()

    def _apply(self, step: Step) -> None:
        now = time.monotonic()
        for child in self.children:
            if step is Step.GRACEFUL:
                child.send(child.graceful)
                child.asked = True
                child.deadline = None if child.grace is None else now + child.grace
            elif step is Step.AT_ONCE and child.at_once is not None:
                child.send(child.at_once)
                child.deadline = now + AT_ONCE_GRACE
            elif step is Step.KILL:
                child.kill()

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.deadline is not None and now >= child.deadline and child.running:
                child.kill()

    def exited_unasked(self) -> list[Child]:
        """Children that exited without being asked to stop (each reported once)."""
        found = [
            child for child in self.children if not child.asked and not child.unexpected and not child.running
        ]
        for child in found:
            child.unexpected = True
        return found

    def finished(self) -> bool:
        return not any(child.running for child in self.children)
