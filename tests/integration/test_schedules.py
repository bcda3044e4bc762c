"""Schedules against the real ledger: the CLI changes them while a beat (the cron loop, in a thread) runs."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from beat.cron import CronLoop
from beat.runner import Runner
from jobs import db
from jobs.cli.main import cli
from jobs.errors import InvalidJobOptions
from jobs.schedules import Every, ScheduleSpec, count_slots
from jobs.schema import jobs, maintenance_runs, schedules

pytestmark = pytest.mark.integration


@pytest.fixture
def sched(clean):
    """A clean ledger without schedules or maintenance records, before and after (a beat may share it)."""

    def wipe() -> None:
        with db.transaction(clean) as conn:
            conn.execute(sa.text("TRUNCATE schedules, maintenance_runs"))

    wipe()
    yield clean
    wipe()


def jobs_cli(*args: str) -> Result:
    """The jobs command in this process (same settings); returns click's result."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ok(*args: str) -> Any:
    result = jobs_cli(*args)
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return json.loads(result.stdout) if "--json" in args else result


def refused(*args: str) -> str:
    """Runs a command that must be refused: exit 2, one line, no traceback; returns the line."""
    result = jobs_cli(*args)
    assert result.exit_code == 2, (args, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def firings(settings, name: str) -> list[dict[str, Any]]:
    with db.transaction(settings) as conn:
        rows = conn.execute(
            sa.select(jobs).where(jobs.c.schedule_name == name).order_by(jobs.c.schedule_slot)
        ).all()
    return [dict(row._mapping) for row in rows]


def schedule_row(settings, name: str) -> dict[str, Any]:
    with db.transaction(settings) as conn:
        return dict(conn.execute(sa.select(schedules).where(schedules.c.name == name)).one()._mapping)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met in {timeout}s")


class BeatThread:
    """The leader's cron loop ticking in a thread, as a running beat does (election left out)."""

    def __init__(self, maintenance: Any, *, grace: float = 5.0, declared: Any = ()) -> None:
        self.cron = CronLoop(interval=0.1, grace=grace, catchup=3600, declared=declared)
        self.runner = Runner(maintenance, [self.cron], record=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.runner.tick()
            self._stop.wait(0.1)

    def __enter__(self) -> BeatThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def beat(maintenance, sched) -> Iterator[BeatThread]:
    with BeatThread(maintenance) as running:
        yield running


def assert_consecutive(rows: list[dict[str, Any]], step: float) -> None:
    slots = [row["schedule_slot"] for row in rows]
    assert len(slots) == len(set(slots))
    for before, after in itertools.pairwise(slots):
        assert (after - before).total_seconds() == step, slots


def test_the_running_beat_obeys_add_edit_pause_trigger_resume_remove(beat, sched):
    added = ok("schedule", "add", "hb", "ping", "--every", "1s", "-p", "message=one", "--json")
    assert added["timing"] == "every 1s"
    assert len(added["next"]) == 3

    rows = wait_until(lambda: len(firings(sched, "hb")) >= 2 and firings(sched, "hb"), what="two firings")
    assert all(row["payload"] == {"message": "one"} for row in rows)
    assert all(row["submitted_by"] == "schedule:hb" for row in rows)
    assert all(row["schedule_slot"].microsecond == 0 for row in rows)
    assert rows[0]["schedule_slot"] > datetime.fromisoformat(added["created_at"])
    assert_consecutive(rows, 1.0)

    edited = ok("schedule", "edit", "hb", "-p", "message=two", "--json")
    changed_at = datetime.fromisoformat(edited["updated_at"])
    newer = wait_until(
        lambda: [r for r in firings(sched, "hb") if r["created_at"] > changed_at], what="a firing after edit"
    )
    assert newer[0]["payload"] == {"message": "two"}  # picked up within a tick

    paused = ok("schedule", "pause", "hb", "--json")
    assert paused["changed"] is True
    assert paused["next"] == []
    count = len(firings(sched, "hb"))
    time.sleep(2.5)
    assert len(firings(sched, "hb")) == count  # a paused schedule does not fire

    triggered = ok("schedule", "trigger", "hb", "--json")  # fires by hand even while paused
    manual = [r for r in firings(sched, "hb") if str(r["id"]) == triggered["id"]]
    assert len(manual) == 1
    assert manual[0]["submitted_by"].startswith("schedule:hb manual (cli:")
    shown = ok("schedule", "show", "hb", "--json")
    assert shown["last_job"]["id"] == triggered["id"]
    assert [f["manual"] for f in shown["firings"] if f["id"] == triggered["id"]] == [True]
    assert len(firings(sched, "hb")) == count + 1

    resumed = ok("schedule", "resume", "hb", "--json")
    resumed_at = datetime.fromisoformat(resumed["updated_at"])
    wait_until(lambda: len(firings(sched, "hb")) >= count + 3, what="firings after resume")
    after = [r for r in firings(sched, "hb") if r["created_at"] > resumed_at]
    assert after
    assert all(r["schedule_slot"] > resumed_at for r in after)  # the paused slots never fire

    removed = ok("schedule", "remove", "hb", "--json")
    assert removed["removed"] == "hb"
    time.sleep(0.5)
    final = len(firings(sched, "hb"))
    time.sleep(1.5)
    assert len(firings(sched, "hb")) == final  # removed: no more firings; the jobs stay
    assert "no schedule named 'hb'" in refused("schedule", "show", "hb")


def test_edit_of_the_timing_starts_afresh_and_list_shows_next_firings_in_the_zone(sched):
    ok("schedule", "add", "nightly", "ping", "--cron", "30 2 * * *", "--tz", "Europe/Berlin")
    listed = ok("schedule", "list", "--json")
    (view,) = listed["schedules"]
    assert view["timing"] == "cron 30 2 * * * (Europe/Berlin)"
    times = [datetime.fromisoformat(text) for text in view["next"]]
    assert len(times) == 3
    assert all(t.hour == 2 and t.minute == 30 for t in times)  # shown in the schedule's zone
    assert all(t.utcoffset() in (timedelta(hours=1), timedelta(hours=2)) for t in times)
    assert view["last_job"] is None
    assert listed["leader"] is None

    before = schedule_row(sched, "nightly")["handled_until"]
    time.sleep(0.05)
    edited = ok("schedule", "edit", "nightly", "--every", "1h", "--json")
    assert edited["cron"] is None
    assert edited["every_seconds"] == 3600
    assert schedule_row(sched, "nightly")["handled_until"] > before
    assert schedule_row(sched, "nightly")["updated_by"].startswith("cli:")
    ok("schedule", "edit", "nightly", "--misfire", "all")
    assert schedule_row(sched, "nightly")["misfire"] == "all"
    human = jobs_cli("schedule", "list")
    assert human.exit_code == 0
    assert "nightly" in human.stdout
    assert "no beat is leading" in human.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "x", "ping", "--cron", "61 * * * *"), "invalid cron expression '61 * * * *': minute"),
        (("add", "x", "ping", "--cron", "* * *"), "it needs 5 fields"),
        (("add", "x", "ping", "--cron", "@reboot"), "unknown alias"),
        (("add", "x", "ping", "--every", "1m", "--tz", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (("add", "x", "no.such.kind", "--every", "1m"), "unknown job kind 'no.such.kind'"),
        (("add", "x", "test.effect", "--every", "1m"), "invalid payload for kind 'test.effect': key"),
        (("add", "x", "ping", "--every", "1m", "-p", "nope=1"), "nope: Extra inputs are not permitted"),
        (
            ("add", "x", "ping", "--every", "1m", "--payload", '{"message": "a\\u0000b"}'),
            "message: contains a NUL character (\\u0000), which the ledger cannot store",
        ),
        (("add", "x", "ping", "--every", "1m", "--payload", "[1]"), "--payload must be a JSON object"),
        (("add", "x", "ping"), "give --cron EXPR or --every DURATION"),
        (("add", "x", "ping", "--cron", "@daily", "--every", "1m"), "give --cron EXPR or --every DURATION"),
        (("add", "x", "ping", "--every", "0.5s"), "invalid interval"),
        (("add", "bad name", "ping", "--every", "1m"), "invalid schedule name"),
        (("edit", "missing", "--every", "1m"), "no schedule named 'missing'"),
        (("pause", "missing"), "no schedule named 'missing'"),
        (("trigger", "missing"), "no schedule named 'missing'"),
        (("remove", "missing"), "no schedule named 'missing'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(sched, args, message):
    line = refused("schedule", *args)
    assert message in line
    with db.transaction(sched) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schedules)).scalar_one() == 0


def test_bad_edit_changes_nothing(sched):
    ok("schedule", "add", "hb", "ping", "--every", "1m")
    before = schedule_row(sched, "hb")
    assert "already exists" in refused("schedule", "add", "hb", "ping", "--every", "5m")
    assert "invalid cron" in refused("schedule", "edit", "hb", "--cron", "* * * * * *")
    assert "unknown time zone" in refused("schedule", "edit", "hb", "--tz", "Nowhere/Land")
    assert "Extra inputs" in refused("schedule", "edit", "hb", "-p", "bogus=1")
    assert "nothing to change" in refused("schedule", "edit", "hb")
    assert schedule_row(sched, "hb") == before


def test_declared_schedules_are_synced_and_only_paused_from_the_cli(maintenance, sched):
    declared = [ScheduleSpec("code.hb", "ping", {"message": "v1"}, every="1h", misfire="skip")]
    cron = CronLoop(interval=0.1, grace=5, catchup=3600, declared=declared)
    assert cron.sync(maintenance) == ["added declared schedule code.hb"]
    row = schedule_row(sched, "code.hb")
    assert row["declared"] is True
    assert row["updated_by"] == "code"

    assert "declared in code (beat/declared.py)" in refused("schedule", "edit", "code.hb", "--every", "5m")
    assert "declared in code (beat/declared.py)" in refused("schedule", "remove", "code.hb")
    ok("schedule", "pause", "code.hb")
    assert ok("schedule", "show", "code.hb", "--json")["declared"] is True

    changed = [ScheduleSpec("code.hb", "ping", {"message": "v2"}, every="1h", misfire="skip")]
    assert CronLoop(0.1, 5, 3600, declared=changed).sync(maintenance) == ["updated declared schedule code.hb"]
    row = schedule_row(sched, "code.hb")
    assert row["payload"] == {"message": "v2"}
    assert row["enabled"] is False  # the operator's pause survives the sync
    assert CronLoop(0.1, 5, 3600, declared=changed).sync(maintenance) == []  # nothing to do

    ok("schedule", "add", "cli.one", "ping", "--every", "1h")
    invalid = [*changed, ScheduleSpec("broken", "no.such.kind", every=5)]
    assert CronLoop(0.1, 5, 3600, declared=invalid).sync(maintenance) == []  # the invalid one is left out
    assert CronLoop(0.1, 5, 3600, declared=[]).sync(maintenance) == [
        "removed declared schedule code.hb (no longer declared in code)"
    ]
    names = [view["name"] for view in ok("schedule", "list", "--json")["schedules"]]
    assert names == ["cli.one"]  # CLI schedules are not code's to remove


def test_one_firing_per_slot_when_many_submit_the_same_slot_at_once(producer, sched):
    slot = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    barrier = threading.Barrier(8)

    def fire(_: int) -> Any:
        barrier.wait()
        return producer.submit("ping", schedule_name="race", schedule_slot=slot, submitted_by="schedule:race")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fire, range(8)))
    assert len({uuid.UUID(str(job)) for job in results}) == 1
    assert sum(not job.duplicate for job in results) == 1
    assert len(firings(sched, "race")) == 1


def test_the_producer_checks_the_schedule_pair(producer, sched):
    with pytest.raises(InvalidJobOptions, match="both its schedule name and its slot"):
        producer.submit("ping", schedule_name="x")
    with pytest.raises(InvalidJobOptions, match="UTC offset"):
        producer.submit("ping", schedule_name="x", schedule_slot=datetime(2026, 1, 1))  # noqa: DTZ001
    first = producer.submit("ping", schedule_name="x", schedule_slot=datetime(2026, 1, 1, tzinfo=UTC))
    again = producer.submit("ping", schedule_name="x", schedule_slot=datetime(2026, 1, 1, tzinfo=UTC))
    assert (again, again.duplicate, first.duplicate) == (first, True, False)


def test_two_leaders_at_once_never_fire_a_slot_twice(maintenance, sched):
    """The election disabled: two cron loops race for 4 seconds, and a stale leader re-fires old slots."""
    ok("schedule", "add", "race", "ping", "--every", "1s", "--misfire", "all")
    with BeatThread(maintenance), BeatThread(maintenance):
        time.sleep(4)
    rows = firings(sched, "race")
    assert len(rows) >= 3
    assert_consecutive(rows, 1.0)

    # A leader whose view is stale (its cursor update lost) fires the same slots again: all refused.
    with db.transaction(sched) as conn:
        conn.execute(
            sa.update(schedules)
            .where(schedules.c.name == "race")
            .values(handled_until=rows[0]["schedule_slot"] - timedelta(microseconds=1), enabled=True)
        )
    stale = CronLoop(interval=0.1, grace=3600, catchup=3600)
    stale._synced = True
    stale.fire(maintenance, "race", rows[-1]["schedule_slot"])
    assert [r["id"] for r in firings(sched, "race")] == [r["id"] for r in rows]


def test_overlap_skip_waits_for_the_previous_firing_and_records_the_skips(beat, sched):
    ok("schedule", "add", "slow", "ping", "--every", "1s", "--overlap", "skip")
    (first,) = wait_until(lambda: firings(sched, "slow"), what="a first firing")
    time.sleep(2.5)  # no worker: the first firing stays queued
    assert [r["id"] for r in firings(sched, "slow")] == [first["id"]]
    shown = ok("schedule", "show", "slow", "--json")
    assert shown["skipped"] >= 2
    assert (
        f"overlap=skip: 1 slot(s) not fired (job {first['id']} is still queued)" in shown["last_skip_reason"]
    )

    with db.transaction(sched) as conn:  # the previous firing finishes
        conn.execute(sa.update(jobs).where(jobs.c.id == first["id"]).values(state="succeeded"))
    wait_until(lambda: len(firings(sched, "slow")) == 2, what="a firing once the previous one finished")


@pytest.mark.parametrize("policy", ["skip", "once", "all"])
def test_misfire_policy_after_the_leader_was_down(maintenance, sched, policy):
    ok("schedule", "add", "m", "ping", "--every", "2s", "--misfire", policy)
    with db.transaction(sched) as conn:  # as if the leader had been down for the last 11 seconds
        conn.execute(
            sa.update(schedules).values(handled_until=sa.func.now() - sa.text("interval '11 seconds'"))
        )
    before = schedule_row(sched, "m")["handled_until"]
    cron = CronLoop(interval=0.1, grace=0.0, catchup=3600, declared=[])  # grace 0: every due slot is late
    fired = cron.run(maintenance)
    after = schedule_row(sched, "m")
    due = count_slots(Every(2), before, after["handled_until"])
    assert due >= 5
    slots = [r["schedule_slot"] for r in firings(sched, "m")]
    if policy == "skip":
        assert (fired, slots) == (0, [])
        assert after["skipped"] == due
    elif policy == "once":
        assert (fired, slots) == (1, [after["handled_until"]])  # the latest missed slot, once
        assert after["skipped"] == due - 1
    else:
        assert fired == due
        assert slots[-1] == after["handled_until"]
        assert [(b - a).total_seconds() for a, b in itertools.pairwise(slots)] == [2.0] * (due - 1)
        assert after["skipped"] == 0
    # Nothing fired twice: a second run fires only a slot that came due since the first (every 2 s;
    # on a busy machine the second run can reach the next one, which grace 0 makes late too).
    again = cron.run(maintenance)
    later = [r["schedule_slot"] for r in firings(sched, "m") if r["schedule_slot"] not in slots]
    assert again == len(later) <= 1, (again, later)
    assert all(slot > after["handled_until"] for slot in later)


def test_a_firing_that_no_longer_validates_is_recorded_not_retried(maintenance, sched):
    with db.transaction(sched) as conn:  # a kind this beat does not know (its module was removed)
        conn.execute(
            sa.insert(schedules).values(
                name="orphan",
                kind="gone.kind",
                payload={},
                every_seconds=86400,  # daily: no new slot between the two runs (with 1 s, one sometimes was)
                handled_until=sa.func.now() - sa.text("interval '2 days'"),
            )
        )
    cron = CronLoop(interval=0.1, grace=5, catchup=3600, declared=[])
    assert cron.run(maintenance) == 0
    row = schedule_row(sched, "orphan")
    assert "unknown job kind 'gone.kind'" in row["last_error"]
    assert firings(sched, "orphan") == []
    listed = ok("schedule", "list", "--json")
    assert "unknown job kind" in listed["schedules"][0]["last_error"]
    first_error_at = row["last_error_at"]
    assert cron.run(maintenance) == 0  # its slots were dealt with: not tried again every tick
    assert schedule_row(sched, "orphan")["last_error_at"] == first_error_at


def test_a_cron_reads_day_of_month_or_day_of_week_as_standard_cron_does(sched):
    """``0 9 1 * MON``: every 1st and every Monday, as any crontab would (not Mondays that are the 1st)."""
    ok("schedule", "add", "standup", "ping", "--cron", "0 9 1 * MON", "--tz", "Europe/Berlin")
    shown = ok("schedule", "show", "standup", "--json")
    times = [datetime.fromisoformat(text) for text in shown["next"]]
    assert len(times) == 5
    assert all(t.hour == 9 and t.minute == 0 for t in times)  # in the schedule's zone
    assert all(t.utcoffset() in (timedelta(hours=1), timedelta(hours=2)) for t in times)
    days = [t.date() for t in times]
    assert all(day.day == 1 or day.isoweekday() == 1 for day in days)
    for before, after in itertools.pairwise(days):  # no 1st and no Monday left out in between
        between = [before + timedelta(days=n) for n in range(1, (after - before).days)]
        assert not [day for day in between if day.day == 1 or day.isoweekday() == 1], (before, after)


def test_a_saved_cron_expression_the_rules_now_refuse_is_reported_and_can_be_fixed(
    maintenance, sched, caplog
):
    with db.transaction(sched) as conn:  # saved while Celery's parser accepted full day names
        conn.execute(sa.insert(schedules).values(name="old", kind="ping", payload={}, cron="0 0 * * monday"))
    assert CronLoop(interval=0.1, grace=5, catchup=3600, declared=[]).run(maintenance) == 0
    assert "schedule old cannot fire: invalid cron expression '0 0 * * monday'" in caplog.text
    (view,) = ok("schedule", "list", "--json")["schedules"]
    assert view["next"] == []
    assert "'monday' is not a number or a name" in view["last_error"]
    assert "jobs schedule edit old --cron" in view["last_error"]
    fixed = ok("schedule", "edit", "old", "--cron", "0 0 * * mon", "--json")
    assert len(fixed["next"]) == 3
    assert fixed["last_error"] is None


def test_the_leader_records_each_maintenance_loop_and_list_shows_them(maintenance, sched):
    class Broken:
        name, interval = "broken", 0.0

        def run(self, env: Any) -> int:
            raise RuntimeError("bug in a loop")

    runner = Runner(
        maintenance, [CronLoop(0.5, 5, 3600, declared=[]), Broken()], identity="jobs-leader:test:1"
    )
    runner.tick()
    with db.transaction(sched) as conn:
        rows = {row.name: row for row in conn.execute(sa.select(maintenance_runs)).all()}
    assert set(rows) == {"cron", "broken"}
    assert rows["cron"].last_result == 0
    assert rows["cron"].last_error is None
    assert rows["cron"].interval_seconds == 0.5
    assert rows["broken"].last_error == "RuntimeError: bug in a loop"
    assert rows["broken"].leader == "jobs-leader:test:1"
    loops = {loop["name"]: loop for loop in ok("schedule", "list", "--json")["maintenance"]}
    assert loops["broken"]["last_error"] == "RuntimeError: bug in a loop"
    assert loops["cron"]["seconds_ago"] < 60
    human = jobs_cli("schedule", "list")
    assert "maintenance (on the leader)" in human.stdout
    assert "bug in a loop" in human.stdout
