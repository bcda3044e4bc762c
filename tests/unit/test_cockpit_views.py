"""The cockpit's pure parts: every reason ``jobs explain`` gives, and ``jobs top`` fitting 80x24."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from jobs import broker, explain, fleet, observe, snapshot
from jobs.cli import top
from jobs.pauses import Pause

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)


def a_job(state: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "kind": "ping",
        "queue": "default",
        "state": state,
        "attempt": 0,
        "max_attempts": 3,
        "not_before": None,
        "lease_until": None,
        "worker": None,
        "started_at": None,
        "published_at": NOW,
        "progress": None,
        "error": None,
        **fields,
    }


def facts(job: dict[str, Any], **fields: Any) -> explain.Facts:
    given: dict[str, Any] = {
        "now": NOW,
        "job": job,
        "paused": False,
        "leader": "jobs-leader:host:1",
        "consumers": ["celery@a"],
        "live_workers": ["celery@a"],
        "ahead": 0,
        **fields,
    }
    return explain.Facts(**given)


def codes(given: explain.Facts) -> list[str]:
    return [reason.code for reason in explain.reasons(given)]


def test_a_delayed_job_is_not_due_until_its_time():
    found = explain.reasons(facts(a_job("scheduled", not_before=NOW + timedelta(minutes=10))))
    assert [reason.code for reason in found] == ["not_due"]
    assert "in 10m00s" in found[0].message


def test_a_due_retry_without_a_leader_is_not_being_published():
    job = a_job("retrying", not_before=NOW - timedelta(seconds=30))
    assert codes(facts(job, leader=None)) == ["no_leader"]
    assert codes(facts(job)) == ["staging"]


def test_a_delayed_job_without_a_leader_says_both():
    job = a_job("scheduled", not_before=NOW + timedelta(minutes=1))
    assert codes(facts(job, leader=None)) == ["not_due", "no_leader"]


def test_a_queued_job_in_a_paused_queue():
    found = explain.reasons(facts(a_job("queued"), paused=True, consumers=[]))
    assert [reason.code for reason in found] == ["paused"]
    assert "jobs queue resume default" in found[0].action


def test_a_queued_job_nobody_consumes():
    found = explain.reasons(facts(a_job("queued"), consumers=[]))
    assert [reason.code for reason in found] == ["no_consumer"]
    assert "jobs worker -Q default" in found[0].action


def test_a_job_whose_kind_no_live_worker_implements_waits_for_one() -> None:
    found = explain.reasons(
        facts(a_job("queued", kind="greetings.greet", published_at=None), implementers=[])
    )
    assert [reason.code for reason in found] == ["no_implementer"]
    assert "no live worker implements kind 'greetings.greet'" in found[0].message
    assert "no attempt is spent" in found[0].action


def test_a_job_whose_kind_runs_only_on_other_queues_says_where() -> None:
    found = explain.reasons(
        facts(
            a_job("queued", kind="greetings.greet", published_at=None),
            implementers=[],
            implemented_elsewhere=["worker-2@b"],
        )
    )
    assert found[0].code == "no_implementer"
    assert "on queue 'default' (it runs on worker-2@b" in found[0].message


def test_without_the_roster_nothing_is_said_about_kinds() -> None:
    assert [
        reason.code
        for reason in explain.reasons(facts(a_job("queued", kind="greetings.greet", published_at=None)))
    ] == ["next"]


def test_a_retrying_job_is_not_told_to_drop_a_delay_it_never_had() -> None:
    job = a_job("retrying", attempt=1, not_before=NOW + timedelta(seconds=30))
    (reason,) = explain.reasons(facts(job))
    assert "retry backoff after attempt 1 of 3" in reason.message
    assert "--delay" not in reason.action
    assert "jobs cancel" in reason.action


def test_a_queued_job_behind_others():
    found = explain.reasons(facts(a_job("queued"), ahead=7))
    assert [reason.code for reason in found] == ["waiting"]
    assert "behind 7 job(s)" in found[0].message


def test_a_queued_job_next_in_line():
    assert codes(facts(a_job("queued"))) == ["next"]


def test_an_unpublished_job_without_a_leader():
    assert codes(facts(a_job("queued", published_at=None), leader=None)) == ["no_leader"]


def test_a_job_whose_worker_stopped_heartbeating():
    job = a_job(
        "running", worker="celery@gone", attempt=1, lease_until=NOW - timedelta(seconds=5), started_at=NOW
    )
    found = explain.reasons(facts(job, live_workers=["celery@a"]))
    assert [reason.code for reason in found] == ["worker_lost"]
    assert "celery@gone" in found[0].message
    assert "lease expired" in found[0].message


def test_a_job_whose_worker_does_not_answer_before_its_lease_ends():
    job = a_job("running", worker="celery@gone", attempt=1, lease_until=NOW + timedelta(minutes=5))
    found = explain.reasons(facts(job, live_workers=["celery@a"], leader=None))
    assert [reason.code for reason in found] == ["worker_lost", "no_leader"]
    assert "does not answer" in found[0].message


def test_a_running_job():
    job = a_job(
        "running",
        worker="celery@a",
        attempt=1,
        started_at=NOW - timedelta(seconds=90),
        lease_until=NOW + timedelta(minutes=5),
        progress={"done": 3, "total": 10, "message": "x"},
    )
    found = explain.reasons(facts(job))
    assert [reason.code for reason in found] == ["running"]
    assert "running now on celery@a" in found[0].message
    assert "progress 3/10" in found[0].message


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_a_finished_job(state):
    job = a_job(
        state, attempt=3, error={"type": "RuntimeError", "message": "boom"} if state == "failed" else None
    )
    found = explain.reasons(facts(job))
    assert [reason.code for reason in found] == ["finished"]
    assert f"already finished: {state}" in found[0].message
    if state == "failed":
        assert "RuntimeError: boom" in found[0].message


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (42, "42s"), (185, "3m05s"), (7800, "2h10m"), (273600, "3d04h")]
)
def test_spans_are_short(seconds, text):
    assert observe.span(seconds) == text


def test_reserved_messages_are_counted_by_routing_key():
    values = [b'[{"m": 1}, "", "default"]', b'[{"m": 2}, "", "default"]', b'[{}, "", "mail"]', b"garbage"]
    assert broker._reserved_by_queue(values) == {"default": 2, "mail": 1}


@pytest.mark.parametrize(
    ("save", "appendonly", "persistent"),
    [("", "no", False), ("3600 1", "no", True), ("", "yes", True), (None, "no", None)],
)
def test_redis_persistence(save, appendonly, persistent):
    assert broker.RedisConfig(save, appendonly, "noeviction").persistent is persistent


def busy_snapshot(queues: int = 12, running: int = 30, failures: int = 10) -> snapshot.Snapshot:
    stats = {
        f"queue-with-a-rather-long-name-{n}": observe.QueueStats(
            f"queue-with-a-rather-long-name-{n}", {"queued": 1000 * n, "running": 2}, 3725.0, 120, 3
        )
        for n in range(queues)
    }
    ledger = snapshot.Ledger(
        now=NOW,
        queues=stats,
        paused={"queue-with-a-rather-long-name-1": Pause("queue-with-a-rather-long-name-1", NOW, None, None)},
        leader="jobs-leader:host:1",
        running=[
            observe.Running(
                uuid.uuid4(),
                "a.very.long.kind.name.indeed",
                "default",
                "celery@a-very-long-host-name.example.com",
                1,
                65.0,
                -1.0 if n == 0 else 100.0,
                {"done": n, "total": 30, "message": "a long progress message " * 3},
            )
            for n in range(running)
        ],
        failures=[
            observe.Failure(uuid.uuid4(), "http.post", "default", 3, NOW, "HTTPError: 503 " + "x" * 200)
            for _ in range(failures)
        ],
    )
    depths = {name: broker.Depth(name, 1000 * n + (n == queues - 1), 1) for n, name in enumerate(stats)}
    workers = [fleet.Worker("celery@a-very-long-host-name.example.com", ["default"], "prefork", 4, 60, 1, [])]
    return snapshot.Snapshot(ledger, snapshot.queue_views(ledger, [], depths, workers), workers)


def frame(taken: snapshot.Snapshot, width: int = 80, height: int = 24) -> list[str]:
    console = Console(width=width, height=height, record=True, color_system=None, file=io.StringIO())
    console.print(top.render(taken, height))
    return console.export_text().splitlines()


def test_top_fits_an_80x24_terminal_however_busy():
    lines = frame(busy_snapshot())
    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "leader host:1" in text
    assert "more)" in text  # rows that do not fit are counted
    assert "≠" in text  # the busiest queue, whose Redis depth differs from the ledger
    assert "lost" in text  # the job whose lease expired
    assert "paused" in text


def test_top_shows_everything_when_there_is_room():
    lines = frame(busy_snapshot(queues=2, running=2, failures=1))
    text = "\n".join(lines)
    assert "running: 2\n" in text + "\n"
    assert "more)" not in text
    assert len(lines) <= 24


def test_top_budget_splits_the_rows():
    assert top._budget(None, 5, 50, 9) == (5, 50, 9, 0)
    shown = top._budget(17, 12, 30, 10)
    assert sum(shown) <= 17
    assert all(count >= 1 for count in shown[:3])
    assert shown[3] == 0  # no limit holds jobs: no limits section
    with_limits = top._budget(17, 12, 30, 10, 8)
    assert sum(with_limits) <= 17
    assert all(count >= 1 for count in with_limits)
