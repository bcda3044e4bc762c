"""``jobs worker -P batched``: the pool of single-process batched workers, and its supervisor.

Each worker process is a whole Celery worker (``-P solo``, its own consumer,
node name, roster entry and heartbeat) that runs its jobs in batches
(``workers.batching``). The supervisor does for them what the prefork pool's
main process does for its children:

- it **starts** N of them (``-c``, default: the CPU count), each with its own
  node name ``NAME-I.XXXX@HOST`` (``I`` its slot, ``XXXX`` new at every start,
  so the roster and the ledger's ``worker`` column never mix incarnations);
- it **replaces** one that exits while the supervisor is not stopping: one that
  stopped a body at its hard time limit, one recycled past
  ``JOBS_WORKER_MAX_MEMORY_PER_CHILD``, one that crashed or was killed. For one
  that died without saying (killed, crashed), it first hands back the jobs the
  process claimed and never started, their attempt undone (its record,
  ``jobs.unstarted``), and ends the leases of the jobs it was running
  (``jobs.ledger.release_lease``'s rule: the next delivery of their messages,
  or the rescuer, runs them again at once). One that keeps
  dying within seconds of its start is restarted after a growing pause (up to
  30 s), so a broken deployment does not spin;
- it **forwards** SIGTERM, SIGINT (as SIGTERM) and SIGQUIT: each worker then
  gives its running body ``JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT`` seconds, then
  hands it back; the supervisor waits for them all and exits with the worst
  status; one still running a while after that window is killed and its leases
  ended. Each worker process has its own process group, so a signal sent to the
  supervisor's group (Ctrl+C in a terminal) reaches it once, forwarded; one
  whose supervisor dies gets SIGTERM (Linux).

``jobs worker -P batched`` turns into the supervisor with ``exec`` (same pid, so a
signal from a terminal, Docker or systemd reaches it), as ``python -m
jobs.batched_pool`` with its ``Plan`` in the environment: this module imports
nothing of the platform until a process dies and its leases must be ended, so
the supervisor holds about 20 MiB instead of the 43 of a process that loaded
the settings (pydantic) and the command line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket

# bandit B404/B603: the supervisor starts the platform's own worker command, never a shell or user input.
import subprocess  # nosec B404
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import IO, Any, NoReturn, Self

from jobs import unstarted

__all__ = [
    "EXIT_HARD_LIMIT",
    "NODE",
    "PLAN",
    "PROCESS_SUFFIX",
    "Plan",
    "Supervisor",
    "group_of",
    "main",
    "node_names",
]

log = logging.getLogger("jobs.worker")

#: The exit status of a worker process that ended a body at its hard time limit (workers.deadlines).
EXIT_HARD_LIMIT = 75
#: A worker that lived less than this long before exiting counts as failing at start-up.
QUICK_EXIT = 10.0
MAX_PAUSE = 30.0
#: Seconds past the soft shutdown's window a worker gets before it is killed.
SHUTDOWN_GRACE = 15.0
PR_SET_PDEATHSIG = 1  # prctl(2)
#: The environment variable that hands the supervisor its ``Plan`` (JSON).
PLAN = "JOBS_BATCHED_PLAN"
#: In ``Plan.argv``, where each worker process's node name goes.
NODE = "{node}"


def node_names(name: str | None, slot: int) -> str:
    """The node name of slot ``slot``'s next worker process: ``NAME-SLOT.XXXX@HOST``."""
    base, _, host = (name or f"worker-{os.getpid()}@%h").partition("@")
    host = (host or "%h").replace("%h", socket.gethostname())
    return f"{base}-{slot}.{secrets.token_hex(2)}@{host}"


#: What ``node_names`` adds to the worker's own name for one of its processes: ``-SLOT.XXXX``.
PROCESS_SUFFIX = r"-[1-9][0-9]*\.[0-9a-f]{4}"
_NODE = re.compile(rf"(?P<base>.+){PROCESS_SUFFIX}@(?P<host>.*)")


def group_of(node: str) -> str | None:
    """The name of the batched worker (``NAME@HOST``, its ``-n``) whose process is ``node``, or
    ``None`` for a name ``node_names`` did not make."""
    found = _NODE.fullmatch(node)
    return f"{found['base']}@{found['host']}" if found else None


def _detach() -> None:
    """In the new worker process: its own process group, so a signal sent to the supervisor's
    group (Ctrl+C in a terminal, ``kill -- -PGID``) reaches it once, through the supervisor; and
    SIGTERM when the supervisor dies (Linux), so it never outlives it."""
    os.setpgrp()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops it
        pass


@dataclass(frozen=True, slots=True)
class Plan:
    """What the supervisor runs, as ``jobs worker -P batched`` worked it out."""

    concurrency: int
    argv: list[str]
    """A worker process's command line, ``NODE`` standing for its node name."""
    name: str | None
    """``-n``, or None for ``worker-PID@HOST``."""
    soft_shutdown_timeout: float
    log_format: str
    loglevel: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Self:
        found: dict[str, Any] = json.loads(text)
        return cls(**found)

    def argv_for(self, node: str) -> list[str]:
        return [node if part == NODE else part for part in self.argv]


@dataclass(slots=True)
class Slot:
    number: int
    process: subprocess.Popen[bytes] | None = None
    node: str = ""
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    exits: list[int] = field(default_factory=list)
    record: IO[bytes] | None = None
    """What the process claimed and has not started (``jobs.unstarted``)."""


class Supervisor:
    """Runs ``argv_for(node_name)`` in ``concurrency`` slots until asked to stop."""

    def __init__(
        self,
        soft_shutdown_timeout: float,
        concurrency: int,
        argv_for: Callable[[str], list[str]],
        env: dict[str, str],
        name: str | None = None,
    ) -> None:
        self.soft_shutdown_timeout = soft_shutdown_timeout
        self.argv_for = argv_for
        self.env = env
        self.name = name
        self.slots = [Slot(number) for number in range(1, concurrency + 1)]
        self.stopping: int | None = None  # the signal that asked to stop
        self.stop_deadline = 0.0

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._asked_to_stop)
        log.info("supervising %d batched worker process(es)", len(self.slots))
        for slot in self.slots:
            self._start(slot)
        while True:
            now = time.monotonic()
            for slot in self.slots:
                self._look(slot, now)
            if self.stopping is not None:
                running = [slot for slot in self.slots if slot.process is not None]
                if not running:  # the worst last status; killed by signal N is 128 + N, as in a shell
                    last = [
                        code if code >= 0 else 128 - code for slot in self.slots for code in slot.exits[-1:]
                    ]
                    return max(last, default=0)
                if now >= self.stop_deadline:
                    for slot in running:
                        self._kill(slot)
            time.sleep(0.2)

    def _start(self, slot: Slot) -> None:
        slot.node = node_names(self.name, slot.number)
        slot.record = unstarted.create()
        fd = slot.record.fileno()
        slot.process = subprocess.Popen(  # nosec B603
            self.argv_for(slot.node),
            env={**self.env, unstarted.FD: str(fd)},
            pass_fds=(fd,),
            preexec_fn=_detach,  # noqa: PLW1509 - the supervisor runs no other thread
        )
        slot.started = time.monotonic()

    def _look(self, slot: Slot, now: float) -> None:
        process = slot.process
        if process is None:
            if self.stopping is None and now >= slot.restart_at:
                self._start(slot)
            return
        code = process.poll()
        if code is None:
            return
        slot.process = None
        slot.exits.append(code)
        try:
            self._exited(slot, code, now)
        finally:
            if slot.record is not None:
                slot.record.close()
                slot.record = None

    def _exited(self, slot: Slot, code: int, now: float) -> None:
        if self.stopping is not None:
            if code < 0:  # killed by a signal while stopping: its jobs run again elsewhere
                self._end_leases(slot)
            return
        if code in (0, EXIT_HARD_LIMIT):  # it said why (recycled, stopped by hand, a hard time limit)
            why = "stopped a job at its hard time limit" if code else "stopped"
            log.info("worker process %s %s; starting a new one", slot.node, why)
            slot.failures, slot.restart_at = 0, now
            return
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        log.error("worker process %s %s; ending its jobs' leases and starting a new one", slot.node, how)
        self._end_leases(slot)
        # One that dies within seconds of its start again and again waits longer each time.
        slot.failures = slot.failures + 1 if now - slot.started < QUICK_EXIT else 0
        pause = min(2.0 ** (slot.failures - 1), MAX_PAUSE) if slot.failures > 1 else 0.0
        if pause:
            log.warning(
                "worker process slot %d failed %d times in a row at start-up; next start in %gs",
                slot.number,
                slot.failures,
                pause,
            )
        slot.restart_at = now + pause

    def _end_leases(self, slot: Slot) -> None:
        """The worker process is gone: the jobs it claimed and never started go back to their
        queues with their attempt undone; the jobs it ran may run again at once."""
        from jobs import db, ledger  # only now: the supervisor stays small until a process dies
        from jobs.settings import get_settings

        never_started = unstarted.read(slot.record) if slot.record is not None else []
        try:
            with db.transaction(get_settings()) as conn:
                handed = ledger.unclaim_lost(conn, never_started, worker=slot.node) if never_started else ()
                ended = ledger.end_leases_of(conn, slot.node)
            if handed:
                log.warning(
                    "%d job(s) worker process %s claimed and never started: handed back to their queues",
                    len(handed),
                    slot.node,
                )
            if ended:
                log.warning("%d job(s) of worker process %s run again (their leases ended)", ended, slot.node)
        except Exception as error:
            log.error(
                "the leases of worker process %s were not ended (%s); they expire on their own",
                slot.node,
                error,
            )

    def _kill(self, slot: Slot) -> None:
        if slot.process is not None and slot.process.poll() is None:
            log.error("worker process %s did not stop in time: killing it", slot.node)
            slot.process.kill()

    def _asked_to_stop(self, signum: int, frame: FrameType | None) -> None:
        first = self.stopping is None
        self.stopping = signum
        if first:
            self.stop_deadline = time.monotonic() + self.soft_shutdown_timeout + SHUTDOWN_GRACE
        forwarded = signal.SIGTERM if signum == signal.SIGINT else signum
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(forwarded)


def main() -> NoReturn:
    """``python -m jobs.batched_pool``: supervise the ``Plan`` in the environment (``PLAN``)."""
    from jobs import logs

    env = dict(os.environ)
    text = env.pop(PLAN, None)
    if text is None:
        sys.exit(f"{PLAN} is not set: start a batched worker with `jobs worker -P batched`")
    plan = Plan.from_json(text)
    logs.plain(plan.log_format, plan.loglevel)
    supervisor = Supervisor(plan.soft_shutdown_timeout, plan.concurrency, plan.argv_for, env, name=plan.name)
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
