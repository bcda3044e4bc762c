"""The jobs a batched worker process claimed and has not started, kept where its supervisor can read them.

A batched worker process (``workers.batching``) claims its whole batch in one statement,
then runs the bodies one by one. Stopped in order it hands back the jobs it claimed and
never started (``running --unclaim--> queued``, the attempt undone). Killed (SIGKILL, the
kernel's OOM killer, a crash in C code) it cannot: its supervisor does it instead
(``jobs.batched_pool``), from this record, so a lost process costs an attempt only to the
jobs whose bodies started, as a lost prefork pool process costs one only to the job it ran.

The record is a small file the supervisor creates for each process it starts and passes
down as an open file descriptor (``FD``); the process maps it into memory and writes it as
its batch moves:

    claimed(ids) ......... after the claim committed: each id, "not started"
    running(id) .......... before the body runs (started, and named as running now)
    started(id) .......... the id leaves the batch any other way
    withdrawn(ids) ....... not started, handed back while the batch runs (behind a long body)
    timed_out(id) ........ the running body is past its hard limit (the reader records it)
    ended() .............. every id of the batch marked, at the batch's end

A body's mark is a one-byte store into a shared mapping, made before any of its code
runs, and the kernel keeps it whatever kills the process after it: so an id the record
shows "not started" never had a body start. (The reverse can happen, an id marked and
its body never reached, and costs that job the attempt, as without the record.)

Layout: a ``uint32`` count, a ``uint32`` naming the entry whose body runs now (1 + its
position; 0 for none: ``running``, which the main process of ``jobs worker --batches`` reads
to answer ``inspect active``), then ``CAPACITY`` entries of 16 bytes of UUID and one byte, 0
for "not started". Only the first count entries are read; an entry is marked before the
count leaves it, and a batch larger than ``CAPACITY`` records its first ``CAPACITY`` ids.
Standard library only: the supervisor reads it without loading the platform.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import uuid
from collections.abc import Iterable
from typing import IO

__all__ = [
    "CAPACITY",
    "FD",
    "NOT_STARTED",
    "STARTED",
    "TIMED_OUT",
    "WITHDRAWN",
    "Record",
    "create",
    "entries",
    "read",
    "running",
]

#: The environment variable that names the record's file descriptor in a worker process.
FD = "JOBS_BATCHED_UNSTARTED_FD"
#: Entries a record holds (a batch is at most ``JOBS_WORKER_BATCH_SIZE`` messages, 100 by default).
CAPACITY = 4096

_COUNT = struct.Struct("<I")
_NOW = struct.Struct("<I")  # at offset 4: 1 + the entry whose body runs now, 0 for none
_HEAD = _COUNT.size + _NOW.size
_ENTRY = 17  # 16 bytes of UUID, one byte: 0 not started, 1 started (or no longer this batch's)
SIZE = _HEAD + CAPACITY * _ENTRY
#: An entry's states.
NOT_STARTED, STARTED, WITHDRAWN, TIMED_OUT = 0, 1, 2, 3


def create() -> IO[bytes]:
    """A new, empty record (an unlinked temporary file) for one worker process; pass its
    ``fileno()`` down with ``pass_fds`` and under ``FD``."""
    file = tempfile.TemporaryFile()  # noqa: SIM115 - the caller owns it for the process's life
    file.truncate(SIZE)  # zeros: count 0
    return file


def read(file: IO[bytes]) -> list[uuid.UUID]:
    """The ids the process recorded as claimed and not started (read after it died)."""
    return [job_id for job_id, state in entries(file) if state == NOT_STARTED]


def entries(file: IO[bytes]) -> list[tuple[uuid.UUID, int]]:
    """Every id of the process's last batch, with its state: ``NOT_STARTED``, ``STARTED`` (or
    left the batch) or ``WITHDRAWN`` (handed back while the batch ran)."""
    head = os.pread(file.fileno(), _HEAD, 0)  # unbuffered: the process writes it through a mapping
    if len(head) < _HEAD:
        return []
    count = min(_COUNT.unpack_from(head)[0], CAPACITY)
    data = os.pread(file.fileno(), count * _ENTRY, _HEAD)
    found = []
    for index in range(len(data) // _ENTRY):
        at = index * _ENTRY
        found.append((uuid.UUID(bytes=data[at : at + 16]), data[at + 16]))
    return found


def running(file: IO[bytes]) -> uuid.UUID | None:
    """The id whose body the process runs now (the last one marked by ``Record.running`` in the
    batch under way), or ``None``."""
    head = os.pread(file.fileno(), _HEAD, 0)
    if len(head) < _HEAD:
        return None
    (count,) = _COUNT.unpack_from(head)
    (now,) = _NOW.unpack_from(head, _COUNT.size)
    if not 0 < now <= min(count, CAPACITY):
        return None
    entry = os.pread(file.fileno(), 16, _HEAD + (now - 1) * _ENTRY)
    return uuid.UUID(bytes=entry) if len(entry) == 16 else None


class Record:
    """The worker process's side: the record its supervisor opened for it."""

    def __init__(self, fd: int | None) -> None:
        self.map = mmap.mmap(fd, SIZE) if fd is not None else None
        self.index: dict[uuid.UUID, int] = {}
        self.now: tuple[uuid.UUID | None, int | None] = (None, None)  # the body running, its entry

    @classmethod
    def at(cls, path: str) -> Record:
        """A new record in the file ``path`` (a prefork pool process's, ``workers.pool_batches``:
        the pool's main process reads it by the process's pid)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            return cls(fd)
        finally:
            os.close(fd)  # the mapping keeps the file

    @classmethod
    def from_env(cls) -> Record:
        """The record named by ``FD``; one that keeps nothing in a process no supervisor started
        (``celery worker`` run by hand) or whose descriptor is unusable."""
        try:
            return cls(int(os.environ[FD]))
        except (KeyError, ValueError, OSError):
            return cls(None)

    def claimed(self, ids: Iterable[uuid.UUID]) -> None:
        """The claim of a batch committed: these ids are the process's and not started."""
        self.ended()
        if self.map is None:
            return
        index: dict[uuid.UUID, int] = {}
        for position, job_id in enumerate(ids):
            if position == CAPACITY:
                break
            at = _HEAD + position * _ENTRY
            self.map[at : at + 16] = job_id.bytes
            self.map[at + 16] = 0
            index[job_id] = at
        _COUNT.pack_into(self.map, 0, len(index))
        self.index = index

    def started(self, job_id: uuid.UUID) -> None:
        """``job_id`` starts its body now (or leaves the batch without one)."""
        at = self.index.pop(job_id, None)
        if at is not None and self.map is not None:
            self.map[at + 16] = STARTED

    def running(self, job_id: uuid.UUID) -> None:
        """``job_id``'s body starts now: marked started, and named as the body running."""
        at = self.index.get(job_id)
        self.started(job_id)
        self.now = (job_id, at)
        if at is not None and self.map is not None:
            _NOW.pack_into(self.map, _COUNT.size, (at - _HEAD) // _ENTRY + 1)

    def timed_out(self, job_id: uuid.UUID) -> None:
        """The body running, ``job_id``'s, is past its hard limit: its attempt is the reader's to
        record (the main process of ``jobs worker --batches`` records it, as for a pool child)."""
        running, at = self.now
        if running == job_id and at is not None and self.map is not None:
            self.map[at + 16] = TIMED_OUT

    def withdrawn(self, ids: Iterable[uuid.UUID]) -> None:
        """These ids, not started, left the batch while it ran: handed back already (``ledger.unclaim``)."""
        for job_id in ids:
            at = self.index.pop(job_id, None)
            if at is not None and self.map is not None:
                self.map[at + 16] = WITHDRAWN

    def ended(self) -> None:
        """The batch is over: nothing it claimed is waiting any more, no body runs."""
        if self.map is not None:
            for at in self.index.values():
                self.map[at + 16] = STARTED
            _NOW.pack_into(self.map, _COUNT.size, 0)
        self.index = {}
