"""Counters and histograms for Prometheus, kept in the ledger's ``counters`` table.

The ledger prunes finished jobs, so totals cannot be counted from its rows.
Instead every process that ends attempts counts what it did:

- a worker's pool processes: claims (queue wait), finished attempts (run
  time, outcome) and jobs; a worker's main process: hard time limits, lost
  pool processes and refused foreign messages;
- the leader's rescuer and ``jobs cancel``: lost and cancelled attempts and jobs.

A worker adds to its process's ``Tally`` in memory (no database round trip
per job) and a background thread writes it every ``FLUSH_EVERY`` seconds,
and at exit, as ONE upsert that adds to the rows (``write``). The rescuer and
``jobs cancel`` write theirs in the transaction of the change they count.
Totals are therefore monotonic across restarts and the same for every
exporter (``jobs.metrics`` reads them). A process killed with SIGKILL loses
what it counted since its last flush (at most ``FLUSH_EVERY`` seconds).

Metrics (``metric`` column; labels kind, queue and, for counters, outcome):

- ``finished``: jobs that reached a terminal state (outcome: succeeded, failed, cancelled);
- ``attempts``: attempts that ended (outcome: succeeded, error, lost, cancelled, as in ``job_attempts``);
- ``queue_wait``: histogram, seconds from when the job could run (created, or due after a
  delay, a retry or a lost lease) to its claim;
- ``run_time``: histogram, seconds from claim to the recorded outcome of attempts a worker finished.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs import db
from jobs.errors import LedgerUnavailable
from jobs.schema import counters
from jobs.settings import Settings

__all__ = [
    "ATTEMPTS",
    "BUCKETS",
    "FINISHED",
    "FLUSH_EVERY",
    "QUEUE_WAIT",
    "RUN_TIME",
    "Row",
    "Tally",
    "flush_process",
    "histogram",
    "process_tally",
    "read",
    "write",
]

log = logging.getLogger("jobs.counters")

FINISHED = "finished"
ATTEMPTS = "attempts"
QUEUE_WAIT = "queue_wait"
RUN_TIME = "run_time"
HISTOGRAMS = (QUEUE_WAIT, RUN_TIME)

#: Upper bounds of the histograms' buckets, in seconds (a job platform's waits and runs span
#: milliseconds to an hour); anything longer falls in ``+Inf``.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_BOUNDS = tuple(repr(bound) for bound in BUCKETS)  # as Prometheus writes them: 0.005, 1.0
INF = "+Inf"
SUM = "sum"

FLUSH_EVERY = 5.0

Key = tuple[str, str, str, str, str]  # metric, kind, queue, outcome, le


@dataclass(frozen=True, slots=True)
class Row:
    """One stored total."""

    metric: str
    kind: str
    queue: str
    outcome: str
    le: str
    value: float


class Tally:
    """Counts and observations made in memory, to be added to the ledger's totals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, float] = {}

    def _add(self, key: Key, value: float) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0.0) + value

    def count(self, metric: str, kind: str, queue: str, outcome: str, value: float = 1.0) -> None:
        """Add ``value`` to a counter."""
        self._add((metric, kind, queue, outcome, ""), value)

    def observe(self, metric: str, kind: str, queue: str, seconds: float) -> None:
        """Record one observation in a histogram (its bucket and its sum)."""
        seconds = max(seconds, 0.0)
        index = bisect.bisect_left(BUCKETS, seconds)
        bound = _BOUNDS[index] if index < len(BUCKETS) else INF
        with self._lock:
            for key, value in (
                ((metric, kind, queue, "", bound), 1.0),
                ((metric, kind, queue, "", SUM), seconds),
            ):
                self._counts[key] = self._counts.get(key, 0.0) + value

    def attempt_ended(
        self, kind: str, queue: str, outcome: str, *, state: str | None = None, ran: float | None = None
    ) -> None:
        """An attempt ended with ``outcome``; ``state``: the job's terminal state, if it reached one;
        ``ran``: seconds from claim to outcome, for the attempts a worker finished."""
        self.count(ATTEMPTS, kind, queue, outcome)
        if state is not None:
            self.count(FINISHED, kind, queue, state)
        if ran is not None:
            self.observe(RUN_TIME, kind, queue, ran)

    def take(self) -> dict[Key, float]:
        """Everything counted so far; the tally starts again from zero."""
        with self._lock:
            taken, self._counts = self._counts, {}
        return taken

    def give_back(self, taken: Mapping[Key, float]) -> None:
        """Counts that could not be written: kept for the next flush."""
        with self._lock:
            for key, value in taken.items():
                self._counts[key] = self._counts.get(key, 0.0) + value

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)


def write(conn: sa.Connection, taken: Mapping[Key, float]) -> None:
    """Add counts to the stored totals: one statement, rows in key order (concurrent writers
    lock rows in the same order, so they never deadlock)."""
    if not taken:
        return
    rows = [
        {"metric": m, "kind": k, "queue": q, "outcome": o, "le": le, "value": value}
        for (m, k, q, o, le), value in sorted(taken.items())
    ]
    insert = pg_insert(counters).values(rows)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[
                counters.c.metric,
                counters.c.kind,
                counters.c.queue,
                counters.c.outcome,
                counters.c.le,
            ],
            set_={"value": counters.c.value + insert.excluded.value, "updated_at": sa.func.now()},
        )
    )


def read(conn: sa.Connection) -> list[Row]:
    """Every stored total."""
    rows = conn.execute(
        sa.select(
            counters.c.metric,
            counters.c.kind,
            counters.c.queue,
            counters.c.outcome,
            counters.c.le,
            counters.c.value,
        ).order_by(counters.c.metric, counters.c.kind, counters.c.queue, counters.c.outcome, counters.c.le)
    )
    return [Row(*row) for row in rows]


def histogram(rows: Iterable[Row]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (``+Inf`` last) and the sum, from one histogram's stored rows."""
    per_bound: dict[str, float] = {}
    total = 0.0
    for row in rows:
        if row.le == SUM:
            total += row.value
        else:
            per_bound[row.le] = per_bound.get(row.le, 0.0) + row.value
    bounds = sorted({*_BOUNDS, *(le for le in per_bound if le != INF)}, key=float)
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound in bounds:
        running += per_bound.get(bound, 0.0)
        buckets.append((bound, running))
    buckets.append((INF, running + per_bound.get(INF, 0.0)))
    return buckets, total


class _Process:
    """This process's tally and the thread that writes it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tally = Tally()
        self.settings: Settings | None = None
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.failing = False
        self.lock = threading.Lock()
        self.writing = threading.Lock()  # one write at a time: a flush waits for one in flight


_PROCESS = _Process()


# A forked child starts from zero, with no writer thread: its parent's counts are the parent's.
os.register_at_fork(after_in_child=_PROCESS.reset)


def process_tally(settings: Settings) -> Tally:
    """This process's tally; the first call starts the thread that writes it every ``FLUSH_EVERY`` s."""
    state = _PROCESS
    if state.thread is None:
        with state.lock:
            if state.thread is None:
                state.settings = settings
                state.thread = threading.Thread(
                    target=_flush_loop, args=(state,), name="jobs-counters", daemon=True
                )
                state.thread.start()
    return state.tally


def _flush_loop(state: _Process) -> None:
    while not state.stop.wait(FLUSH_EVERY):
        _flush(state)


def _flush(state: _Process) -> bool:
    with state.writing:
        return _write_taken(state)


def _write_taken(state: _Process) -> bool:
    if state.settings is None or not len(state.tally):
        return True
    taken = state.tally.take()
    try:
        with db.autocommit(state.settings) as conn:
            write(conn, taken)
    except LedgerUnavailable as error:
        state.tally.give_back(taken)
        if not state.failing:
            log.warning("counters not written (%s); kept in memory for the next try", error)
        state.failing = True
        return False
    except Exception:  # never lose the counts to a bug in a background thread; say it once
        state.tally.give_back(taken)
        if not state.failing:
            log.exception("counters not written; kept in memory for the next try")
        state.failing = True
        return False
    state.failing = False
    return True


def flush_process() -> bool:
    """Write this process's counts now (at exit, when a pool process ends, in tests), after a
    write in flight has ended; ``False`` if the ledger could not take them."""
    return _flush(_PROCESS)


atexit.register(flush_process)
