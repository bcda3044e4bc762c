"""Shell completion with the real ``jobs`` command: kind, queue and schedule names, also with PostgreSQL down.

The shell asks click through ``_JOBS_COMPLETE=bash_complete`` with the words typed so far;
click answers one ``type,value`` line per suggestion.
"""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs import db
from jobs.cli.completion import LEDGER_BUDGET
from jobs.settings import Settings
from tests.support.fixtures import insert_job, run_jobs

pytestmark = pytest.mark.acceptance

SCHEDULE = "completion-nightly"
BUILT_IN = {"ping", "http.post", "pg.refresh_materialized_view", "pg.vacuum_analyze"}

IMAGES_KIND = '''
    """A kind on its own queue, for the completion tests."""
    from pydantic import BaseModel

    import jobs


    class Resize(BaseModel):
        width: int


    @jobs.kind("images.resize", payload=Resize, queue="images")
    def resize(ctx: jobs.JobContext, p: Resize) -> None:
        """Resize an image."""
'''


def complete(words: str, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """What ``jobs`` suggests for the last (maybe empty) word of ``words``, and what it wrote on stderr.

    The ledger gets 20 s rather than the default 1 s unless ``env`` says otherwise: these tests
    check what is suggested, on a machine the rest of the suite keeps busy; the test of a hung
    ledger checks the budget itself.
    """
    typed = words.split(" ")
    result = run_jobs(
        env={
            "_JOBS_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(typed) - 1),
            "JOBS_COMPLETION_BUDGET": "20",
            **(env or {}),
        },
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return [line.partition(",")[2] for line in result.stdout.splitlines() if line], result.stderr


@pytest.fixture
def kind_modules(tmp_path: Path) -> dict[str, str]:
    """The tests' kinds plus ``images.resize`` on queue ``images``, as JOBS_KIND_MODULES names them."""
    (tmp_path / "completion_kinds.py").write_text(textwrap.dedent(IMAGES_KIND))
    return {"JOBS_KIND_MODULES": "tests.support.kinds,completion_kinds", "PYTHONPATH": str(tmp_path)}


@pytest.fixture
def ledger(clean: Settings) -> Iterator[Settings]:
    """A schedule on queue ``reports``, a paused queue ``exports`` and a job on queue ``thumbnails``."""
    added = run_jobs("schedule", "add", SCHEDULE, "ping", "--every", "1h", "--queue", "reports")
    assert added.returncode == 0, added.stderr
    paused = run_jobs("queue", "pause", "exports")
    assert paused.returncode == 0, paused.stderr
    job = insert_job(clean)
    with db.transaction(clean) as conn:
        conn.execute(sa.text("UPDATE jobs SET queue = 'thumbnails' WHERE id = :id"), {"id": job})
    yield clean
    with db.transaction(clean) as conn:
        conn.execute(sa.text("DELETE FROM schedules WHERE name = :name"), {"name": SCHEDULE})


def test_kinds_are_completed_from_the_registry(kind_modules):
    suggested, _ = complete("jobs submit ", kind_modules)
    assert BUILT_IN | {"test.sleep", "images.resize"} <= set(suggested)

    assert complete("jobs submit pg.", kind_modules)[0] == [
        "pg.refresh_materialized_view",
        "pg.vacuum_analyze",
    ]
    assert complete("jobs kinds show im", kind_modules)[0] == ["images.resize"]
    assert complete("jobs list --kind test.sl", kind_modules)[0] == ["test.sleep"]
    assert complete("jobs schedule add hourly im", kind_modules)[0] == ["images.resize"]


def test_queues_come_from_the_kinds_the_settings_and_the_ledger(kind_modules, ledger):
    everywhere = {"default", "images", "reports", "exports", "thumbnails"}
    for words in (
        "jobs submit ping --queue ",
        "jobs list --queue ",
        "jobs cancel --queue ",
        "jobs queue pause ",
    ):
        suggested, _ = complete(words, kind_modules)
        assert set(suggested) == everywhere, words
    assert complete("jobs queue resume ex", kind_modules)[0] == ["exports"]
    # A comma-separated list: the last name is completed, the ones given are not offered again.
    assert set(complete("jobs worker -Q default,", kind_modules)[0]) == {
        f"default,{name}" for name in everywhere - {"default"}
    }


def test_schedules_are_completed_from_the_ledger(ledger):
    for command in ("show", "edit", "pause", "resume", "trigger", "remove"):
        assert complete(f"jobs schedule {command} completion-")[0] == [SCHEDULE], command
    assert complete("jobs schedule show nothing-like-it")[0] == []


def test_without_postgresql_completion_suggests_what_it_knows_at_once(kind_modules):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    down = {
        **kind_modules,
        "JOBS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/jobs_down_test",
    }
    try:
        assert set(complete("jobs list --queue ", down)[0]) == {"default", "images"}
        assert complete("jobs schedule show ", down)[0] == []
        assert "images.resize" in complete("jobs submit ", down)[0]
    finally:
        closed.close()


def test_a_postgresql_that_does_not_answer_delays_completion_by_the_budget_only(kind_modules):
    """A server that accepts connections and never answers (a hung or firewalled host)."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except TimeoutError:
                continue

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    port = silent.getsockname()[1]
    hung = {
        **kind_modules,
        "JOBS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/jobs_hung_test",
        "JOBS_COMPLETION_BUDGET": str(LEDGER_BUDGET),  # the default, shorter than psycopg's 2 s
    }
    try:
        started = time.monotonic()
        suggested, _ = complete("jobs queue pause ", hung)
        took = time.monotonic() - started
    finally:
        stop.set()
        holder.join(timeout=5)
        for conn in accepted:
            conn.close()
        silent.close()
    assert set(suggested) == {"default", "images"}
    assert accepted, "completion did not try the ledger"
    # The budget plus a generous allowance for start-up on a busy machine; psycopg alone waits 2 s.
    assert took < LEDGER_BUDGET + 10


def test_a_kind_module_that_does_not_import_leaves_the_others(kind_modules):
    broken = {**kind_modules, "JOBS_KIND_MODULES": "tests.support.kinds,no_such_module_here"}
    suggested, stderr = complete("jobs submit ", broken)
    assert BUILT_IN | {"test.sleep"} <= set(suggested)
    assert stderr == ""
