"""Job ids (``jobs.ids``): what ``uuid.uuid4()`` makes, never the same twice, across threads and forks."""

from __future__ import annotations

import os
import threading
import uuid

from jobs import ids


def test_an_id_is_a_version_4_uuid_like_uuid4s():
    for _ in range(1000):  # more than one draw from the OS
        made = ids.new()
        assert type(made) is uuid.UUID
        assert made.version == 4
        assert made.variant == uuid.RFC_4122
        assert uuid.UUID(str(made)) == made
        assert uuid.UUID(bytes=made.bytes, version=4) == made  # the bits uuid4 would set
        assert hash(made) == hash(uuid.UUID(str(made)))


def test_ids_are_unique_across_threads():
    made: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def draw(into: list[uuid.UUID]) -> None:
        into.extend(ids.new() for _ in range(5000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [value for into in made for value in into]
    assert len(every) == 20_000
    assert len(set(every)) == 20_000


def test_a_forked_child_never_repeats_its_parents_next_ids():
    ids.new()  # the parent has ids drawn and not yet handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, b"".join(ids.new().bytes for _ in range(10)))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = {ids.new().bytes for _ in range(300)}
    from_child = {child[at : at + 16] for at in range(0, len(child), 16)}
    assert len(from_child) == 10
    assert not parent & from_child
