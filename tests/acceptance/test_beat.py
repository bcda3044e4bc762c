"""The leader as an operator runs it: real ``jobs beat`` and ``jobs worker`` processes, short intervals.

- one leader fires an every-2-seconds schedule exactly once per slot for 20 seconds;
- two beats for 20 seconds: one leads; SIGKILL the leader and the standby takes
  over within ``JOBS_LEADER_TAKEOVER``; no slot doubled, none lost beyond the
  misfire policy;
- no beat leads for 10 seconds: each misfire policy (skip, once, all) does what
  ``docs/scheduling.md`` says;
- the pruner on the leader removes old finished jobs and keeps recent ones.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from beat.leader import Leadership
from jobs import db, ledger
from jobs.leader import current_leader
from jobs.schedules import Every
from jobs.schema import jobs, maintenance_runs
from jobs.settings import Settings
from tests.support.fixtures import Processes, run_jobs

pytestmark = pytest.mark.acceptance

TAKEOVER = 2.0  # JOBS_LEADER_TAKEOVER for the beats here: the bound the SIGKILL test checks
GRACE = 1.0  # JOBS_SCHEDULE_GRACE: a slot seen later than this is missed
# The takeover test only counts lost slots around the takeover: a grace close to EVERY keeps a tick
# delayed by a loaded 2-core machine from losing a misfire=skip slot elsewhere.
TAKEOVER_GRACE = {"JOBS_SCHEDULE_GRACE": "1.8"}
BEAT_ENV = {"JOBS_LEADER_TAKEOVER": str(TAKEOVER), "JOBS_SCHEDULE_GRACE": str(GRACE)}
EVERY = 2


@pytest.fixture(scope="module")
def stack(ledger_db: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """A worker for the module; each test starts and stops its own beats."""
    started = Processes(tmp_path_factory.mktemp("beat"))
    try:
        started.start("worker", "worker", "-c", "2", "-l", "INFO")
        started.wait_log("worker", "ready.", timeout=60)
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def sched(clean: Settings, stack: Processes) -> Iterator[Settings]:
    def wipe() -> None:
        with db.transaction(clean) as conn:
            conn.execute(sa.text("TRUNCATE schedules, maintenance_runs"))

    wipe()
    try:
        yield clean
    finally:
        for name in [name for name in stack.running if name != "worker"]:
            stack.stop(name)
        wipe()


def cli(*args: str) -> Any:
    result = run_jobs(*args)
    assert result.returncode == 0, f"jobs {' '.join(args)}: exit {result.returncode}\n{result.stderr}"
    return json.loads(result.stdout) if "--json" in args else result


def start_beat(stack: Processes, name: str, **env: str) -> None:
    """A beat with its own log (names are unique in the module: the logs are appended to)."""
    stack.start(name, "beat", "-l", "INFO", env={**BEAT_ENV, **env})


def firings(settings: Settings, name: str) -> list[Any]:
    with db.transaction(settings) as conn:
        return list(
            conn.execute(
                sa.select(jobs.c.id, jobs.c.schedule_slot, jobs.c.created_at, jobs.c.state)
                .where(jobs.c.schedule_name == name)
                .order_by(jobs.c.schedule_slot)
            ).all()
        )


def expected(start: datetime, end: datetime) -> list[datetime]:
    slots, moment = [], start
    while (moment := Every(EVERY).next_after(moment)) <= end:
        slots.append(moment)
    return slots


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def checkpoint(after: datetime, phase: float = 1.0) -> datetime:
    """``phase`` seconds past the first slot after ``after``: a moment no firing is racing with."""
    return Every(EVERY).next_after(after) + timedelta(seconds=phase)


def leader_now(settings: Settings) -> str | None:
    with db.transaction(settings) as conn:
        return current_leader(conn)


def identity(stack: Processes, name: str) -> str:
    return f"jobs-leader:{os.uname().nodename}:{stack.running[name].pid}"


def test_one_leader_fires_every_slot_exactly_once_for_20_seconds(stack, sched):
    start_beat(stack, "one-a")
    stack.wait_log("one-a", "is now the leader")
    added = cli("schedule", "add", "tick", "ping", "--every", f"{EVERY}s", "--misfire", "all", "--json")
    since = datetime.fromisoformat(added["handled_until"])

    end = checkpoint(since + timedelta(seconds=20))
    sleep_until(end + timedelta(seconds=0.5))
    fired = [row for row in firings(sched, "tick") if row.schedule_slot <= end]

    want = expected(since, end)
    assert len(want) >= 10
    assert [row.schedule_slot for row in fired] == want  # exactly the expected slots, each once
    assert max((row.created_at - row.schedule_slot).total_seconds() for row in fired) < GRACE
    deadline = time.monotonic() + 20
    while any(row.state != "succeeded" for row in firings(sched, "tick") if row.schedule_slot <= end):
        assert time.monotonic() < deadline, "the worker did not run every firing"
        time.sleep(0.2)

    listed = cli("schedule", "list", "--json")
    assert listed["leader"] == identity(stack, "one-a")
    (view,) = listed["schedules"]
    assert view["last_job"]["state"] in ("queued", "running", "succeeded")
    assert len(view["next"]) == 3
    loops = {loop["name"]: loop for loop in listed["maintenance"]}
    assert set(loops) >= {"cron", "stager", "relay", "rescuer", "pruner"}
    assert all(loop["seconds_ago"] < loop["interval_seconds"] + 10 for loop in loops.values())
    assert loops["cron"]["leader"] == identity(stack, "one-a")
    human = run_jobs("schedule", "list")
    assert "tick" in human.stdout
    assert "maintenance (on the leader)" in human.stdout
    assert f"leader: {identity(stack, 'one-a')}" in human.stderr


def test_two_beats_one_leads_and_the_standby_takes_over_from_a_sigkilled_leader(stack, sched):
    start_beat(stack, "two-a", **TAKEOVER_GRACE)
    stack.wait_log("two-a", "is now the leader")
    start_beat(stack, "two-b", **TAKEOVER_GRACE)
    stack.wait_log("two-b", "beat: Starting...")
    added = cli("schedule", "add", "duo", "ping", "--every", f"{EVERY}s", "--misfire", "all", "--json")
    added_skip = cli(
        "schedule", "add", "duo-skip", "ping", "--every", f"{EVERY}s", "--misfire", "skip", "--json"
    )
    since = datetime.fromisoformat(added["handled_until"])
    # Its own start: a slow `jobs` start on a loaded machine can put a slot between the two adds.
    since_skip = datetime.fromisoformat(added_skip["handled_until"])
    assert leader_now(sched) == identity(stack, "two-a")

    sleep_until(checkpoint(since + timedelta(seconds=9), phase=0.5))
    assert "is now the leader" not in stack.log("two-b")  # it waited as a standby all along
    standby = identity(stack, "two-b")
    killed_at = datetime.now(UTC)
    started = time.monotonic()
    stack.stop("two-a", signal.SIGKILL)
    while leader_now(sched) != standby:
        assert time.monotonic() - started < 10, "the standby never took over"
        time.sleep(0.02)
    takeover = time.monotonic() - started
    took_over_at = datetime.now(UTC)
    print(f"\nleader takeover after SIGKILL: {takeover:.3f}s (bound JOBS_LEADER_TAKEOVER={TAKEOVER:g}s)")
    assert takeover < TAKEOVER

    end = checkpoint(took_over_at + timedelta(seconds=9))
    sleep_until(end + timedelta(seconds=0.5))
    want = expected(since, end)
    assert len(want) >= 10
    fired = [row.schedule_slot for row in firings(sched, "duo") if row.schedule_slot <= end]
    assert fired == want  # misfire=all: nothing lost across the takeover, nothing doubled
    skip_fired = [row.schedule_slot for row in firings(sched, "duo-skip") if row.schedule_slot <= end]
    assert len(skip_fired) == len(set(skip_fired))
    lost = [slot for slot in expected(since_skip, end) if slot not in skip_fired]
    window = (
        killed_at - timedelta(seconds=1),
        took_over_at,
    )  # misfire=skip may lose only the takeover's slots
    assert all(window[0] <= slot <= window[1] for slot in lost), (lost, window)
    assert "is now the leader" in stack.log("two-b")


def test_no_leader_for_10_seconds_with_each_misfire_policy(stack, sched):
    start_beat(stack, "misfire-a")
    stack.wait_log("misfire-a", "is now the leader")
    for policy in ("skip", "once", "all"):
        cli("schedule", "add", f"mf-{policy}", "ping", "--every", f"{EVERY}s", "--misfire", policy)
    time.sleep(4)

    blocker = Leadership(sched)  # keeps the next beat waiting, so the test decides when it leads
    try:
        stack.stop("misfire-a")  # SIGTERM: it steps down
        stopped_at = datetime.now(UTC)
        assert blocker.ensure()
        start_beat(stack, "misfire-b")  # starts as a standby during the outage
        stack.wait_log("misfire-b", "beat: Starting...")
        # Back 10 s later, 1.3 s after a slot: that slot is late beyond the 1 s grace when beat-b fires.
        released_at = checkpoint(stopped_at + timedelta(seconds=10), phase=1.3)
        sleep_until(released_at)
    finally:
        blocker.release()
    stack.wait_log("misfire-b", "is now the leader")
    sleep_until(checkpoint(released_at + timedelta(seconds=4)))

    latest = Every(EVERY).next_after(released_at) - timedelta(seconds=EVERY)  # newest slot at the return
    outcome: dict[str, list[datetime]] = {}
    missed: dict[str, list[datetime]] = {}
    for policy in ("skip", "once", "all"):
        slots = [row.schedule_slot for row in firings(sched, f"mf-{policy}")]
        before = [slot for slot in slots if slot <= stopped_at]
        assert before, f"mf-{policy} fired before the outage"
        assert all(b - a == timedelta(seconds=EVERY) for a, b in itertools.pairwise(before))
        missed[policy] = expected(before[-1], latest)  # the slots that came due while no beat led
        assert len(missed[policy]) >= 5
        outcome[policy] = [slot for slot in slots if before[-1] < slot <= latest]
        after = [slot for slot in slots if slot > latest]
        assert after, f"mf-{policy} fires again after the outage"
        assert after[0] == latest + timedelta(seconds=EVERY)  # and on time from there
        assert all(b - a == timedelta(seconds=EVERY) for a, b in itertools.pairwise(after))

    assert outcome["skip"] == []  # fires nothing for the missed slots
    assert outcome["once"] == [latest]  # fires the latest missed slot, once
    assert outcome["all"] == missed["all"]  # fires each missed slot, in order
    shown = cli("schedule", "show", "mf-skip", "--json")
    assert "misfire=skip" in shown["last_skip_reason"]
    assert shown["skipped"] >= 5
    assert cli("schedule", "show", "mf-all", "--json")["skipped"] == 0


def test_the_pruner_on_the_leader_removes_old_finished_jobs_and_keeps_recent_ones(stack, sched):
    def insert(state: str, age: int) -> uuid.UUID:
        job_id = uuid.uuid4()
        row = {"id": job_id, "kind": "ping", "queue": "default", "priority": 5, "payload": {}}
        with db.transaction(sched) as conn:
            ledger.insert_rows(conn, [{**row, "state": state, "max_attempts": 1}], idempotent=False)
            moment = sa.text(f"now() - interval '{age} seconds'")
            conn.execute(
                sa.update(jobs).where(jobs.c.id == job_id).values(created_at=moment, finished_at=moment)
            )
        return job_id

    old = [insert("succeeded", 7200) for _ in range(30)] + [
        insert("cancelled", 7200),
        insert("failed", 90000),
    ]
    kept = [insert("succeeded", 60), insert("failed", 7200), insert("queued", 90000)]

    start_beat(stack, "prune-a", JOBS_RETENTION_SUCCEEDED="3600", JOBS_RETENTION_FAILED="86400")
    stack.wait_log("prune-a", "is now the leader")
    deadline = time.monotonic() + 20
    while True:
        with db.transaction(sched) as conn:
            run = conn.execute(sa.select(maintenance_runs).where(maintenance_runs.c.name == "pruner")).first()
            left = set(conn.execute(sa.select(jobs.c.id)).scalars())
        if run is not None:
            break
        assert time.monotonic() < deadline, "the pruner never reported a run"
        time.sleep(0.2)
    assert run.last_result == len(old)
    assert left == set(kept)
    assert "pruner: removed 32 finished job(s)" in stack.log("prune-a")
    loops = {loop["name"]: loop for loop in cli("schedule", "list", "--json")["maintenance"]}
    assert loops["pruner"]["last_result"] == len(old)
    assert loops["pruner"]["interval_seconds"] == 60
