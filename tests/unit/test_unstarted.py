"""``jobs.unstarted``: what a batched worker process claimed and did not start, as its supervisor reads it."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import pytest

from jobs import unstarted
from jobs.batched_pool import Supervisor

pytestmark = pytest.mark.unit


def test_only_the_ids_not_started_of_the_current_batch_are_read():
    with unstarted.create() as file:
        only_the_ids_not_started(file)


def test_a_pool_process_record_is_a_file_named_by_its_owner(tmp_path: Path):
    """``Record.at`` (a ``jobs worker --batches`` pool process's): the pool's main process reads
    every entry, started or not, from the path."""
    path = tmp_path / str(os.getpid())
    path.write_bytes(b"stale")  # a previous process's with the same pid: started afresh
    record = unstarted.Record.at(str(path))
    ids = [uuid.uuid4() for _ in range(3)]
    record.claimed(ids)
    record.started(ids[1])

    def now(read: Any) -> Any:  # as the main process reads it: the file opened afresh
        with open(path, "rb") as file:
            return read(file)

    assert now(unstarted.entries) == [
        (ids[0], unstarted.NOT_STARTED),
        (ids[1], unstarted.STARTED),
        (ids[2], unstarted.NOT_STARTED),
    ]
    assert now(unstarted.read) == [ids[0], ids[2]]
    assert now(unstarted.running) is None  # started is not running: it left the batch
    record.running(ids[2])
    assert (now(unstarted.running), now(unstarted.read)) == (ids[2], [ids[0]])
    record.running(ids[0])
    assert now(unstarted.running) == ids[0]
    record.ended()
    assert (now(unstarted.running), now(unstarted.read)) == (None, [])

    later = [uuid.uuid4() for _ in range(3)]  # withdrawn: handed back while the batch ran
    record.claimed(later)
    record.withdrawn(later[1:])
    assert now(unstarted.entries) == [
        (later[0], unstarted.NOT_STARTED),
        (later[1], unstarted.WITHDRAWN),
        (later[2], unstarted.WITHDRAWN),
    ]
    assert now(unstarted.read) == [later[0]]
    record.running(later[0])
    record.timed_out(later[1])  # not the body running: nothing changes
    record.timed_out(later[0])  # past its hard limit: the reader records its attempt
    assert now(unstarted.entries)[0] == (later[0], unstarted.TIMED_OUT)


def only_the_ids_not_started(file: IO[bytes]) -> None:
    record = unstarted.Record(file.fileno())
    first = [uuid.uuid4() for _ in range(5)]
    record.claimed(first)
    record.started(first[0])
    record.started(first[1])
    assert unstarted.read(file) == first[2:]
    record.started(uuid.uuid4())  # not the batch's: nothing changes
    assert unstarted.read(file) == first[2:]

    record.ended()
    assert unstarted.read(file) == []
    second = [uuid.uuid4() for _ in range(2)]  # shorter than the last: its leftovers stay marked
    record.claimed(second)
    assert unstarted.read(file) == second


def test_a_batch_larger_than_the_record_keeps_its_first_ids():
    with unstarted.create() as file:
        record = unstarted.Record(file.fileno())
        ids = [uuid.uuid4() for _ in range(unstarted.CAPACITY + 3)]
        record.claimed(ids)
        assert unstarted.read(file) == ids[: unstarted.CAPACITY]
        record.started(ids[-1])  # beyond the record: counted as started (its attempt spent if lost)
        assert len(unstarted.read(file)) == unstarted.CAPACITY


def test_a_process_no_supervisor_started_keeps_no_record(monkeypatch):
    monkeypatch.delenv(unstarted.FD, raising=False)
    record = unstarted.Record.from_env()
    assert record.map is None
    ids = [uuid.uuid4()]
    record.claimed(ids)
    record.started(ids[0])
    record.ended()
    monkeypatch.setenv(unstarted.FD, "not a number")
    assert unstarted.Record.from_env().map is None


STAND_IN = """
import os, signal, sys, uuid
from pathlib import Path
from jobs import unstarted

record = unstarted.Record.from_env()
ids = [uuid.UUID(int=n) for n in range(1, 6)]
record.claimed(ids)
record.started(ids[0])  # its body "runs" when the process is killed
Path(sys.argv[1]).write_text(os.environ["NODE"])
signal.pause()
"""


def test_the_supervisor_reads_what_a_killed_process_claimed_and_never_started(tmp_path: Path):
    """The record survives a SIGKILL: the supervisor gets the four ids whose bodies never started."""
    ready = tmp_path / "ready"
    handed: list[tuple[str, list[uuid.UUID]]] = []
    pool = Supervisor(
        1.0,
        1,
        lambda node: [sys.executable, "-c", STAND_IN, str(ready)],
        {**os.environ, "NODE": "stand-in"},
    )
    pool._end_leases = lambda slot: handed.append(  # type: ignore[method-assign]  # no ledger here
        (slot.node, unstarted.read(slot.record) if slot.record else [])
    )
    (slot,) = pool.slots
    pool._start(slot)
    process = slot.process
    assert process is not None
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the stand-in worker did not start"
            assert process.poll() is None, "the stand-in worker exited"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        while slot.process is not None:
            assert time.monotonic() < deadline, "the stand-in worker was not seen to die"
            pool._look(slot, time.monotonic())
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert handed == [(slot.node, [uuid.UUID(int=n) for n in range(2, 6)])]
