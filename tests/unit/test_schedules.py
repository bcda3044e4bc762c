"""Schedules without servers: parsing, next-firing arithmetic, DST, misfire and overlap decisions."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs.catalog import load_kinds
from jobs.errors import InvalidPayload, UnknownKind
from jobs.schedules import (
    Cron,
    Every,
    InvalidSchedule,
    ScheduleSpec,
    count_slots,
    latest_slot,
    overlap,
    parse_cron,
    parse_every,
    parse_zone,
    plan,
    slots_between,
    upcoming,
    validate,
)

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    # mypy cannot count *args, so it takes one for tzinfo: they are year to microsecond, never more.
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type, misc]


def local(*args: int, zone: ZoneInfo = BERLIN, fold: int = 0) -> datetime:
    """A local time as the instant it names (compared in UTC: repeated local times never compare equal)."""
    return datetime(*args, tzinfo=zone, fold=fold).astimezone(UTC)  # type: ignore[arg-type, misc]  # see utc


# --- parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30 2 * * *", "30 2 * * *"),
        ("  */15   9-17 * * mon-fri ", "*/15 9-17 * * mon-fri"),
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@MIDNIGHT", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("0 0 1 jan-mar *", "0 0 1 jan-mar *"),
        ("0-59/10 * * * *", "0-59/10 * * * *"),
        ("0 9 1 * MON", "0 9 1 * MON"),
        ("0 0 * * 7", "0 0 * * 7"),  # Sunday, as in standard cron
        ("0 0 * * mon-7", "0 0 * * mon-7"),
        ("0 0 30 2 mon", "0 0 30 2 mon"),  # never the 30th of February, but every Monday in February
        ("0 0 */2 JAN,Dec SUN", "0 0 */2 JAN,Dec SUN"),
        ("00 05 * * *", "00 05 * * *"),
    ],
)
def test_cron_expressions_and_aliases(text, expected):
    assert parse_cron(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("* * * *", "it needs 5 fields"),
        ("* * * * * *", "it needs 5 fields"),
        ("", "it needs 5 fields"),
        ("@reboot", "unknown alias"),
        ("61 * * * *", "minute (0-59) '61': 61 is out of range"),
        ("* 24 * * *", "hour (0-23) '24': 24 is out of range"),
        ("* * 0 * *", "day of month (1-31) '0': 0 is out of range"),
        ("* * * 13 *", "month (1-12 or jan-dec) '13': 13 is out of range"),
        ("* * * * 8", "day of week (0-7 or sun-sat, Sunday = 0 or 7) '8': 8 is out of range"),
        ("*/0 * * * *", "minute (0-59) '*/0': a step cannot be zero"),
        ("*/x * * * *", "the step 'x' is not a number"),
        ("1-2-3 * * * *", "minute (0-59) '1-2-3': expected *"),
        ("1,,2 * * * *", "minute (0-59) '1,,2': expected *"),
        ("5/15 * * * *", "minute (0-59) '5/15': a step needs * or a range: */15 or 5-59/15"),
        ("22-2 * * * *", "the range 22-2 runs backwards (split it, like 22-59,0-2)"),
        ("0 0 30 2 *", "day of month '30' never occurs in month '2'"),
        ("0 0 31 4,6 */2", "day of month '31' never occurs in month '4,6'"),  # */2 leaves the days ANDed
        ("x * * * *", "minute (0-59) 'x': 'x' is not a number"),
        ("0 0 * * monday", "'monday' is not a number or a name"),
        ("0 0 1 foo *", "month (1-12 or jan-dec) 'foo': 'foo' is not a number or a name"),
        ("0 0 L * *", "'L' is not a number (L, W, # and ? are not supported)"),
        ("0 0 LW * *", "L, W, # and ? are not supported"),
        ("0 0 15W * *", "L, W, # and ? are not supported"),
        ("0 0 * * 5L", "L, W, # and ? are not supported"),
        ("0 0 * * mon#2", "L, W, # and ? are not supported"),
        ("0 0 ? * mon", "day of month (1-31) '?': expected *"),
        ("0 0 0 0 0 0", "it needs 5 fields"),
    ],
)
def test_bad_cron_expressions_say_which_field_in_one_line(text, message):
    with pytest.raises(InvalidSchedule) as caught:
        parse_cron(text)
    assert message in caught.value.message
    assert caught.value.message.startswith(f"invalid cron expression {text!r}")
    assert "\n" not in caught.value.message


def test_zones_are_iana_names():
    assert parse_zone("Europe/Berlin").key == "Europe/Berlin"
    assert parse_zone("UTC").key == "UTC"
    for bad in ("Mars/Base", "", "europe/berlin", "localtime", "../etc/passwd", "/etc/localtime", "Europe"):
        with pytest.raises(InvalidSchedule, match="unknown time zone"):
            parse_zone(bad)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), (2, 2), ("90", 90)])
def test_intervals(text, seconds):
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "1.5s", "500ms", "soon", "-5"])
def test_bad_intervals(text):
    with pytest.raises(InvalidSchedule, match="interval"):
        parse_every(text)


# --- next-firing arithmetic ----------------------------------------------------------------------------


def brute_force_next(expression: str, moment: datetime) -> datetime:
    """The next matching minute in UTC, by walking the calendar (the definition of standard cron).

    A day matches when its day of month and day of week both match, except that
    when both fields are restricted (neither starts with ``*``) either suffices.
    """
    from jobs.schedules.timing import _FIELDS, _values

    parts = expression.split()
    minutes, hours, days, months, weekdays = (
        _values(spec, part) for spec, part in zip(_FIELDS, parts, strict=True)
    )
    weekdays = {day % 7 for day in weekdays}  # 7 is Sunday too
    either = not parts[2].startswith("*") and not parts[4].startswith("*")

    def day_matches(day: datetime) -> bool:
        by_date, by_weekday = day.day in days, day.isoweekday() % 7 in weekdays
        return (by_date or by_weekday) if either else (by_date and by_weekday)

    candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while True:
        if not (candidate.month in months and day_matches(candidate)):
            candidate = candidate.replace(hour=0, minute=0) + timedelta(days=1)
        elif candidate.hour not in hours:
            candidate = candidate.replace(minute=0) + timedelta(hours=1)
        elif candidate.minute not in minutes:
            candidate += timedelta(minutes=1)
        else:
            return candidate


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "*/7 * * * *",
        "30 2 * * *",
        "0 9-17/2 * * mon-fri",
        "15 0 1,15 * *",
        "0 0 31 * *",
        "0 12 29 2 *",
        "45 23 * * 0",
        "45 23 * * 7",
        "0 0 1 1 *",
        "5,10 4 * 3,10 6",
        "0 9 1 * mon",  # both day fields restricted: the 1st or a Monday
        "30 6 13 * fri",
        "0 0 1,15 2-4 sat,sun",
        "0 0 30 2 mon",
        "0 12 */2 * mon",  # a field starting with * counts as unrestricted: odd days that are Mondays
        "0 12 1-31 * mon",  # 1-31 is a restriction (that happens to hold every day): every day
        "0 12 10-20 * */3",
    ],
)
def test_cron_steps_match_the_minute_by_minute_definition(expression):
    timing = Cron(parse_cron(expression))
    generator = random.Random(expression)
    starts = [utc(2024, 1, 1), utc(2024, 2, 28, 23, 59, 30), utc(2026, 12, 31, 23, 59)]
    starts += [utc(2024, 1, 1) + timedelta(seconds=generator.randrange(3 * 365 * 86400)) for _ in range(25)]
    for start in starts:
        expected = brute_force_next(expression, start)
        if (expected - start).days > 400:
            continue  # pragma: no cover
        assert timing.next_after(start) == expected, (expression, start)


def test_day_of_month_or_day_of_week_when_both_are_restricted():
    """Standard cron: ``0 9 1 * MON`` fires on every 1st and on every Monday (Celery's crontab: both)."""
    slots = upcoming(Cron(parse_cron("0 9 1 * MON")), utc(2027, 1, 1), 10)
    assert slots == [
        utc(2027, 1, 1, 9),  # a Friday, the 1st
        utc(2027, 1, 4, 9),  # Mondays
        utc(2027, 1, 11, 9),
        utc(2027, 1, 18, 9),
        utc(2027, 1, 25, 9),
        utc(2027, 2, 1, 9),  # a Monday and the 1st: once
        utc(2027, 2, 8, 9),
        utc(2027, 2, 15, 9),
        utc(2027, 2, 22, 9),
        utc(2027, 3, 1, 9),
    ]
    year = slots_between(Cron("0 9 1 * MON"), utc(2027, 1, 1), utc(2028, 1, 1), 100)
    days = [date(2027, 1, 1) + timedelta(days=n) for n in range(365)]
    assert [slot.date() for slot in year] == [day for day in days if day.day == 1 or day.isoweekday() == 1]
    assert len(year) == 12 + 52 - 3  # Feb, Mar and Nov 2027 begin on a Monday


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # Only the day of month restricted: every 1st, whatever the weekday (unchanged).
        ("0 9 1 * *", [(2027, 1, 1), (2027, 2, 1), (2027, 3, 1), (2027, 4, 1)]),
        # Only the day of week restricted: every Monday (unchanged).
        ("0 9 * * mon", [(2027, 1, 4), (2027, 1, 11), (2027, 1, 18), (2027, 1, 25)]),
        # A field starting with * is unrestricted, however it continues: Mondays that are odd days.
        ("0 9 */2 * mon", [(2027, 1, 11), (2027, 1, 25), (2027, 2, 1), (2027, 2, 15)]),
        # 1-31 is a restriction: with the weekday it ORs into every day.
        ("0 9 1-31 * mon", [(2027, 1, 1), (2027, 1, 2), (2027, 1, 3), (2027, 1, 4)]),
    ],
)
def test_when_one_day_field_is_unrestricted_both_must_match(expression, expected):
    slots = upcoming(Cron(parse_cron(expression)), utc(2027, 1, 1), len(expected))
    assert slots == [utc(*day, 9) for day in expected]


def test_day_or_weekday_in_a_zone_across_both_dst_changes():
    """``30 2 1 * sun`` in Berlin: 1sts and Sundays, the DST Sundays by their rules, each day once."""
    timing = Cron(parse_cron("30 2 1 * sun"), BERLIN)
    spring = upcoming(timing, utc(2026, 3, 20), 4)
    assert spring == [
        local(2026, 3, 22, 2, 30),  # a Sunday
        utc(2026, 3, 29, 1, 0),  # the spring-forward Sunday: 02:30 does not exist, 03:00 CEST once
        local(2026, 4, 1, 2, 30),  # a Wednesday, the 1st: 00:30 UTC in summer time
        local(2026, 4, 5, 2, 30),
    ]
    autumn = upcoming(timing, utc(2026, 10, 20), 4)
    assert autumn == [
        utc(2026, 10, 25, 0, 30),  # the fall-back Sunday: the first 02:30 (CEST) only
        utc(2026, 11, 1, 1, 30),  # a Sunday and the 1st: once, 02:30 CET
        local(2026, 11, 8, 2, 30),
        local(2026, 11, 15, 2, 30),
    ]
    # Seen from inside the repeated hour, the next firing is the 1st of November.
    assert timing.next_after(local(2026, 10, 25, 2, 40, fold=1)) == utc(2026, 11, 1, 1, 30)
    year = slots_between(timing, utc(2026, 1, 1), utc(2027, 1, 1), 1000)
    days = [date(2026, 1, 1) + timedelta(days=n) for n in range(365)]
    expected = [day for day in days if day.day == 1 or day.isoweekday() == 7]
    assert len(expected) == 12 + 52 - 3  # Feb, Mar and Nov 2026 begin on a Sunday
    assert [slot.astimezone(BERLIN).date() for slot in year] == expected
    assert all(slot.astimezone(BERLIN).strftime("%H:%M") in ("02:30", "03:00") for slot in year)


def test_a_saved_expression_refused_under_the_current_rules_is_reported_not_fired():
    """Schedules saved before cron meant cron may hold expressions Celery took (``22-2``, ``monday``)."""
    from types import SimpleNamespace

    from jobs.schedules import timing_of, view

    for expression, reason in (("22-2 * * * *", "runs backwards"), ("0 0 * * monday", "not a number")):
        row = SimpleNamespace(cron=expression, every_seconds=None, timezone="UTC")
        with pytest.raises(InvalidSchedule, match=reason):
            timing_of(row)
    with pytest.raises(InvalidSchedule, match="Bad minute"):  # cronsim's own check, without parse_cron
        Cron("22-2 * * * *").next_after(utc(2026, 1, 1))
    fields = dict.fromkeys(
        (
            "payload",
            "queue",
            "priority",
            "workflow",
            "last_job_id",
            "last_workflow_id",
            "last_slot",
            "last_fired_at",
            "last_skip_at",
        ),
        None,
    )
    fields.update(last_skip_reason=None, last_error=None, last_error_at=None, skipped=0, updated_by="cli")
    row = SimpleNamespace(
        name="old",
        kind="ping",
        cron="0 0 * * monday",
        every_seconds=None,
        timezone="UTC",
        enabled=True,
        declared=False,
        misfire="once",
        overlap="allow",
        handled_until=utc(2026, 1, 1),
        created_at=utc(2026, 1, 1),
        updated_at=utc(2026, 1, 1),
        **fields,
    )
    shown = view(row, utc(2026, 5, 1))
    assert shown["next"] == []
    assert "'monday' is not a number or a name" in shown["last_error"]
    assert shown["last_error"].endswith("(fix it with jobs schedule edit old --cron)")
    row.declared = True
    assert view(row, utc(2026, 5, 1))["last_error"].endswith("(fix it in beat/declared.py)")


def test_next_after_is_strictly_after_and_upcoming_counts():
    timing = Cron("0 * * * *")
    assert timing.next_after(utc(2026, 5, 1, 10)) == utc(2026, 5, 1, 11)
    assert timing.next_after(utc(2026, 5, 1, 9, 59, 59, 999999)) == utc(2026, 5, 1, 10)
    assert upcoming(timing, utc(2026, 5, 1, 10, 30), 3) == [
        utc(2026, 5, 1, 11),
        utc(2026, 5, 1, 12),
        utc(2026, 5, 1, 13),
    ]


def test_a_cron_is_read_in_its_zone():
    timing = Cron("30 2 * * *", BERLIN)
    assert timing.next_after(utc(2026, 1, 10)) == local(2026, 1, 10, 2, 30)  # 01:30 UTC in winter
    assert timing.next_after(utc(2026, 7, 10)) == local(2026, 7, 10, 2, 30)  # 00:30 UTC in summer
    new_york = Cron("0 9 * * mon-fri", ZoneInfo("America/New_York"))
    assert new_york.next_after(utc(2026, 6, 5, 14)) == utc(2026, 6, 8, 13)  # Friday 10:00 EDT -> Monday 09:00


def test_intervals_count_from_the_epoch():
    every = Every(30)
    assert every.next_after(utc(2026, 5, 1, 10, 0, 0)) == utc(2026, 5, 1, 10, 0, 30)
    assert every.next_after(utc(2026, 5, 1, 10, 0, 29, 999999)) == utc(2026, 5, 1, 10, 0, 30)
    assert every.next_after(utc(2026, 5, 1, 10, 0, 30)) == utc(2026, 5, 1, 10, 1, 0)
    assert Every(7).next_after(utc(1970, 1, 1)) == utc(1970, 1, 1, 0, 0, 7)
    assert upcoming(Every(3600), utc(2026, 5, 1, 10, 15), 2) == [utc(2026, 5, 1, 11), utc(2026, 5, 1, 12)]


def test_latest_slot_and_counts():
    every = Every(2)
    now = utc(2026, 5, 1, 10, 0, 11, 500000)
    assert latest_slot(every, now, utc(2026, 5, 1, 10)) == utc(2026, 5, 1, 10, 0, 10)
    assert latest_slot(every, now, utc(2026, 5, 1, 10, 0, 10)) is None  # handled already
    assert count_slots(every, utc(2026, 5, 1, 10), now) == 5
    assert slots_between(every, utc(2026, 5, 1, 10), now, 3) == [
        utc(2026, 5, 1, 10, 0, 2),
        utc(2026, 5, 1, 10, 0, 4),
        utc(2026, 5, 1, 10, 0, 6),
    ]
    daily = Cron("30 2 * * *")
    now = utc(2026, 5, 10, 12)
    assert latest_slot(daily, now, utc(2026, 1, 1)) == utc(2026, 5, 10, 2, 30)
    assert count_slots(daily, utc(2026, 5, 1), now) == 10
    leap = Cron("0 0 29 2 *")
    assert latest_slot(leap, utc(2031, 1, 1), utc(2020, 1, 1)) == utc(2028, 2, 29)


# --- daylight saving time ------------------------------------------------------------------------------
# Europe/Berlin 2026: clocks go 02:00 CET -> 03:00 CEST on 29 March (02:xx does not exist),
# and 03:00 CEST -> 02:00 CET on 25 October (02:xx happens twice).


def test_daily_0230_on_the_spring_forward_night_fires_once_at_the_next_valid_time():
    timing = Cron("30 2 * * *", BERLIN)
    slots = upcoming(timing, utc(2026, 3, 27, 12), 4)
    assert slots == [
        local(2026, 3, 28, 2, 30),  # 01:30 UTC
        local(2026, 3, 29, 3, 0),  # 02:30 does not exist: fires at 03:00 CEST (01:00 UTC), once
        local(2026, 3, 30, 2, 30),  # 00:30 UTC
        local(2026, 3, 31, 2, 30),
    ]
    assert slots[1] == utc(2026, 3, 29, 1, 0)


def test_daily_0230_on_the_fall_back_night_fires_once_at_the_first_0230():
    timing = Cron("30 2 * * *", BERLIN)
    slots = upcoming(timing, utc(2026, 10, 23, 12), 4)
    assert slots == [
        local(2026, 10, 24, 2, 30),
        local(2026, 10, 25, 2, 30, fold=0),  # 02:30 CEST = 00:30 UTC
        local(2026, 10, 26, 2, 30),  # not 02:30 CET on the 25th (01:30 UTC)
        local(2026, 10, 27, 2, 30),
    ]
    assert slots[1] == utc(2026, 10, 25, 0, 30)
    # Seen from inside the repeated hour (02:10 CET, second pass), the next firing is the next day.
    assert timing.next_after(local(2026, 10, 25, 2, 10, fold=1)) == utc(2026, 10, 26, 1, 30)
    # A leader that was down across the night: exactly one slot on the 25th.
    assert slots_between(timing, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12), 10) == [
        utc(2026, 10, 25, 0, 30)
    ]


def test_hourly_across_spring_forward_stays_hourly_in_real_time():
    timing = Cron("0 * * * *", BERLIN)
    slots = upcoming(timing, utc(2026, 3, 28, 23, 30), 4)
    assert slots == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2), utc(2026, 3, 29, 3)]
    # 01:00 CET, then 02:00 (missing) and 03:00 CEST are the same instant: one firing.
    assert [slot.astimezone(BERLIN).hour for slot in slots] == [1, 3, 4, 5]


def test_minutely_slots_inside_the_gap_collapse_into_one_firing():
    timing = Cron("*/15 * * * *", BERLIN)
    slots = slots_between(timing, utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30), 10)
    assert slots == [
        utc(2026, 3, 29, 0, 45),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 15),
        utc(2026, 3, 29, 1, 30),
    ]


def test_hourly_across_fall_back_fires_the_repeated_hour_once():
    timing = Cron("0 * * * *", BERLIN)
    slots = upcoming(timing, utc(2026, 10, 24, 23, 30), 3)
    # 02:00 CEST (00:00 UTC), then 02:00 CET (01:00 UTC) is a repeat and does not fire, then 03:00 CET.
    assert slots == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 2), utc(2026, 10, 25, 3)]


def test_midnight_that_does_not_exist():
    # America/Santiago skips 00:00-00:59 on 2026-09-06: midnight fires at 01:00 local, once.
    zone = ZoneInfo("America/Santiago")
    timing = Cron("0 0 * * *", zone)
    slots = upcoming(timing, datetime(2026, 9, 5, 12, tzinfo=zone), 2)
    assert [slot.astimezone(zone).strftime("%d %H:%M") for slot in slots] == ["06 01:00", "07 00:00"]


def test_iterating_many_days_in_a_dst_zone_is_strictly_increasing_and_one_per_day():
    timing = Cron("30 2 * * *", BERLIN)
    slots = slots_between(timing, utc(2026, 1, 1), utc(2027, 1, 1), 1000)
    assert len(slots) == 365
    assert all(a < b for a, b in itertools.pairwise(slots))
    assert len({slot.astimezone(BERLIN).date() for slot in slots}) == 365


# --- misfire and overlap decisions ---------------------------------------------------------------------

T0 = utc(2026, 5, 1, 10)


def decide(
    misfire: str, *, down: float, grace: float = 1.0, catchup: float = 3600.0, every: int = 2, limit=100
):
    return plan(
        Every(2),
        handled_until=T0,
        now=T0 + timedelta(seconds=down),
        misfire=misfire,
        grace=grace,
        catchup=catchup,
        limit=limit,
    )


def test_nothing_due_changes_nothing():
    for policy in ("skip", "once", "all"):
        assert decide(policy, down=1.5) == plan(
            Every(2), handled_until=T0, now=T0 + timedelta(seconds=1.5), misfire=policy, grace=1, catchup=1
        )
        assert decide(policy, down=1.5).fire == ()
        assert decide(policy, down=1.5).handled_until == T0


def test_on_time_slot_fires_under_every_policy():
    for policy in ("skip", "once", "all"):
        decided = decide(policy, down=2.2)
        assert decided.fire == (T0 + timedelta(seconds=2),)
        assert decided.handled_until == T0 + timedelta(seconds=2)
        assert decided.missed == 0


def test_skip_fires_nothing_for_missed_slots():
    decided = decide("skip", down=11.5)  # slots at +2 … +10; the newest is 1.5 s late, beyond the grace
    assert decided.fire == ()
    assert decided.handled_until == T0 + timedelta(seconds=10)
    assert decided.missed == 5
    within_grace = decide("skip", down=10.5)  # the newest (+10) is on time: it fires, the 4 before do not
    assert within_grace.fire == (T0 + timedelta(seconds=10),)
    assert within_grace.missed == 4


def test_once_fires_the_latest_missed_slot_once():
    decided = decide("once", down=11.5)
    assert decided.fire == (T0 + timedelta(seconds=10),)
    assert decided.handled_until == T0 + timedelta(seconds=10)
    assert decided.missed == 4
    # A daily schedule whose leader was down for three days fires yesterday's slot, once.
    daily = plan(
        Cron("30 2 * * *"),
        handled_until=utc(2026, 5, 1, 2, 30),
        now=utc(2026, 5, 4, 12),
        misfire="once",
        grace=60,
        catchup=3600,
    )
    assert daily.fire == (utc(2026, 5, 4, 2, 30),)
    assert daily.missed == 2


def test_all_fires_each_missed_slot_within_the_catch_up_window():
    decided = decide("all", down=11.5)
    assert decided.fire == tuple(T0 + timedelta(seconds=s) for s in (2, 4, 6, 8, 10))
    assert decided.handled_until == T0 + timedelta(seconds=10)
    assert decided.missed == 0
    windowed = decide("all", down=11.5, catchup=5)  # only slots no older than 5 s: +8 and +10
    assert windowed.fire == (T0 + timedelta(seconds=8), T0 + timedelta(seconds=10))
    assert windowed.missed == 3
    limited = decide("all", down=11.5, limit=2)  # the rest on the next call
    assert limited.fire == (T0 + timedelta(seconds=2), T0 + timedelta(seconds=4))
    assert limited.handled_until == T0 + timedelta(seconds=4)
    stale = decide("all", down=11.5, catchup=0, grace=0.5)  # nothing young enough
    assert stale.fire == ()
    assert stale.handled_until == T0 + timedelta(seconds=10)


def test_overlap_skip_does_not_fire_while_the_previous_firing_is_busy():
    slots = (T0, T0 + timedelta(seconds=2))
    assert overlap("allow", slots, busy=True) == (slots, 0)
    assert overlap("skip", slots, busy=True) == ((), 2)
    assert overlap("skip", slots, busy=False) == ((slots[-1],), 1)
    assert overlap("skip", slots[:1], busy=False) == (slots[:1], 0)
    assert overlap("skip", (), busy=True) == ((), 0)


# --- validation ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry():
    return load_kinds([])


def test_a_schedule_is_validated_when_saved(registry):
    values = validate(
        ScheduleSpec("nightly", "ping", {"message": "hi"}, cron="@daily", timezone="Europe/Berlin"), registry
    )
    assert values["cron"] == "0 0 * * *"
    assert values["every_seconds"] is None
    assert values["timezone"] == "Europe/Berlin"
    assert values["payload"] == {"message": "hi"}
    assert validate(ScheduleSpec("hb", "ping", every="30s"), registry)["every_seconds"] == 30
    assert validate(ScheduleSpec("hb", "ping", every="30s"), registry)["payload"] == {"message": "pong"}


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (ScheduleSpec("x", "ping"), InvalidSchedule, "give a cron expression or an interval"),
        (ScheduleSpec("x", "ping", cron="@daily", every=5), InvalidSchedule, "one of them"),
        (ScheduleSpec("bad name", "ping", every=5), InvalidSchedule, "invalid schedule name"),
        (ScheduleSpec("x", "nope", every=5), UnknownKind, "unknown job kind 'nope'"),
        (ScheduleSpec("x", "ping", {"foo": 1}, every=5), InvalidPayload, "foo: Extra inputs"),
        (
            ScheduleSpec("x", "ping", {"message": "a\x00b"}, every=5),
            InvalidPayload,
            "message: contains a NUL character (\\u0000), which the ledger cannot store",
        ),
        (
            ScheduleSpec("x", "ping", every=5, queue="q\udcff"),
            InvalidSchedule,
            "schedule x: queue: contains the surrogate code point \\udcff",
        ),
        (ScheduleSpec("x", "ping", every=5, timezone="Nowhere"), InvalidSchedule, "unknown time zone"),
        (ScheduleSpec("x", "ping", every=5, priority=10), InvalidSchedule, "priority 10"),
        # Values outside the Literal types, on purpose: what the validation refuses.
        (ScheduleSpec("x", "ping", every=5, misfire="later"), InvalidSchedule, "misfire"),  # type: ignore[arg-type]
        (ScheduleSpec("x", "ping", every=5, overlap="queue"), InvalidSchedule, "overlap"),  # type: ignore[arg-type]
    ],
)
def test_invalid_schedules_are_refused_with_one_line(registry, spec, error, message):
    with pytest.raises(error) as caught:
        validate(spec, registry)
    assert message in caught.value.message
    assert "\n" not in caught.value.message
    assert caught.value.exit_code == 2


def test_the_schedules_declared_in_code_are_valid(registry):
    from beat.declared import SCHEDULES

    names = [spec.name for spec in SCHEDULES]
    assert len(names) == len(set(names)), "declared schedule names must be unique"
    for spec in SCHEDULES:
        validate(spec, registry)
