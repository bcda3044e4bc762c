"""When a schedule fires: time zones, cron expressions, and the slot arithmetic (pure, no I/O).

A schedule's *slots* are the instants its cron expression names in its time
zone (``Cron``), or the multiples of its fixed interval counted from the Unix
epoch (``Every``: ``every 30s`` fires at :00 and :30 of each minute, whatever
the zone).

Cron expressions follow standard (Vixie, Debian) cron, including its day
rule: when both the day-of-month and the day-of-week fields are restricted, a
day matches if either does (Celery's ``crontab`` would want both). They are
checked here, with one-line errors, and stepped on wall-clock time by
``cronsim``; this module maps wall-clock times to instants in the schedule's
zone, with two rules at daylight-saving changes:

- a local time that does not exist (clocks jump forward over it) fires once,
  at the first instant after the jump (02:30 on the spring-forward night in
  Europe/Berlin fires at 03:00 CEST);
- a local time that happens twice (clocks fall back) fires once, at its first
  occurrence; nothing fires during the repeated hour's second pass.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

from cronsim import CronSim, CronSimError

from jobs.durations import parse_duration
from jobs.errors import InvalidSchedule

__all__ = [
    "ALIASES",
    "Cron",
    "Every",
    "Timing",
    "count_slots",
    "latest_slot",
    "parse_cron",
    "parse_every",
    "parse_zone",
    "slots_between",
    "upcoming",
]


# ---------------------------------------------------------------------------------------------------------
# Time zones and cron expressions


def parse_zone(name: str) -> ZoneInfo:
    """An IANA time zone, or ``InvalidSchedule`` saying it is unknown."""
    if name != "localtime" and name in _zone_names():
        return ZoneInfo(name)
    raise InvalidSchedule(f"unknown time zone {name!r}: use an IANA name like Europe/Berlin or UTC")


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


#: Cron's ``@`` shorthands, as 5-field expressions.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@dataclass(frozen=True, slots=True)
class _Field:
    """One of the five fields: its values run from ``low`` to ``high``; ``names[i]`` means ``low + i``."""

    label: str
    low: int
    high: int
    names: tuple[str, ...] = ()


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_UNSUPPORTED = "L, W, # and ? are not supported"
_MINUTE, _HOUR, _DAY, _MONTH, _WEEKDAY = _FIELDS = (
    _Field("minute (0-59)", 0, 59),
    _Field("hour (0-23)", 0, 23),
    _Field("day of month (1-31)", 1, 31),
    _Field("month (1-12 or jan-dec)", 1, 12, _MONTHS),
    _Field("day of week (0-7 or sun-sat, Sunday = 0 or 7)", 0, 7, _WEEKDAYS),
)
_LONGEST_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_SHAPES = "expected *, */step, a number or name, a range a-b or a-b/step, or a list of these"
_PIECE = re.compile(r"^(?:\*|(?P<first>\w+)(?:-(?P<last>\w+))?)(?:/(?P<step>\w+))?$")


def _value(spec: _Field, text: str) -> int:
    if text.isascii() and text.isdigit():
        number = int(text)
        if not spec.low <= number <= spec.high:
            raise ValueError(f"{number} is out of range")
        return number
    if text.lower() in spec.names:
        return spec.low + spec.names.index(text.lower())
    what = "a number or a name" if spec.names else "a number"
    hint = f" ({_UNSUPPORTED})" if spec in (_DAY, _WEEKDAY) else ""
    raise ValueError(f"{text!r} is not {what}{hint}")


def _values(spec: _Field, part: str) -> set[int]:
    """The values one field names; ``ValueError`` saying what is wrong with it."""
    found: set[int] = set()
    for piece in part.split(","):
        match = _PIECE.match(piece)
        if match is None:
            raise ValueError(_SHAPES + (f"; {_UNSUPPORTED}" if spec in (_DAY, _WEEKDAY) else ""))
        first, last, step = match["first"], match["last"], match["step"]
        if first is None:
            low, high = spec.low, spec.high
        else:
            low = _value(spec, first)
            high = low if last is None else _value(spec, last)
            if step is not None and last is None:
                raise ValueError(f"a step needs * or a range: */{step} or {low}-{spec.high}/{step}")
            if high < low:
                raise ValueError(
                    f"the range {piece} runs backwards (split it, like {low}-{spec.high},{spec.low}-{high})"
                )
        if step is not None and not (step.isascii() and step.isdigit()):
            raise ValueError(f"the step {step!r} is not a number")
        if step is not None and int(step) == 0:
            raise ValueError("a step cannot be zero")
        found.update(range(low, high + 1, int(step or 1)))
    return found


def _restricted(part: str) -> bool:
    """Whether a day field restricts the days, as Vixie cron reads it: unless it starts with ``*``."""
    return not part.startswith("*")


@functools.lru_cache(maxsize=1024)
def parse_cron(text: str) -> str:
    """A 5-field cron expression (or ``@daily``-style alias), normalized; ``InvalidSchedule`` if bad.

    Fields: minute, hour, day of month, month (1-12 or ``jan``-``dec``), day of
    week (0-7 or ``sun``-``sat``, Sunday = 0 or 7). Standard (Vixie) cron
    reading: when both day fields are restricted (neither starts with ``*``),
    a day matches if *either* matches; otherwise it must match both.
    """
    expression = " ".join(text.split())
    expression = ALIASES.get(expression.lower(), expression)
    if expression.startswith("@"):
        raise InvalidSchedule(
            f"invalid cron expression {text!r}: unknown alias (use {', '.join(sorted(set(ALIASES)))})"
        )
    parts = expression.split(" ")
    if len(parts) != len(_FIELDS):
        raise InvalidSchedule(
            f"invalid cron expression {text!r}: it needs 5 fields (minute hour day-of-month month "
            "day-of-week), like '30 2 * * *', or an alias like @daily"
        )
    values: list[set[int]] = []
    for spec, part in zip(_FIELDS, parts, strict=True):
        try:
            values.append(_values(spec, part))
        except ValueError as error:
            raise InvalidSchedule(
                f"invalid cron expression {text!r}: {spec.label} {part!r}: {error}"
            ) from None
    days, months = values[2], values[3]
    both = _restricted(parts[2]) and _restricted(parts[4])
    if not both and min(days) > max(_LONGEST_MONTH[month] for month in months):
        raise InvalidSchedule(
            f"invalid cron expression {text!r}: day of month {parts[2]!r} never occurs in month {parts[3]!r}"
        )
    _next_wall(expression, datetime(2000, 1, 1))  # noqa: DTZ001  # a wall-clock time; cronsim must read it too
    return expression


def _next_wall(expression: str, wall: datetime) -> datetime:
    """The first wall-clock minute strictly after ``wall`` (naive) that ``expression`` names.

    cronsim steps it with Debian cron's day matching; on naive times, so no
    daylight-saving rule of its own applies (``Cron`` applies ours).
    """
    try:
        return next(CronSim(expression, wall))
    except CronSimError as error:  # parse_cron refuses these first; a Cron made without it may not
        raise InvalidSchedule(f"invalid cron expression {expression!r}: {error}") from None
    except StopIteration:  # pragma: no cover - parse_cron refuses expressions that never fire
        raise InvalidSchedule(f"cron expression {expression!r} names no time in the next 50 years") from None


def parse_every(value: float | str) -> int:
    """A fixed interval in whole seconds (``30``, ``"30s"``, ``"5m"``); ``InvalidSchedule`` if bad."""
    try:
        seconds = float(value) if isinstance(value, int | float) else parse_duration(str(value))
    except ValueError as error:
        raise InvalidSchedule(f"invalid interval: {error}") from None
    if seconds < 1 or seconds != int(seconds):
        raise InvalidSchedule(f"invalid interval {value!r}: use whole seconds, at least 1s (like 30s or 5m)")
    return int(seconds)


# ---------------------------------------------------------------------------------------------------------
# Slot arithmetic (pure)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _local_wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def _resolve(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant a wall-clock time means in ``zone``: its first occurrence, or the end of a gap."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _local_wall(first, zone) == wall:
        return first  # exists; fold=0 is the earlier of a repeated time
    # The clocks jumped over ``wall``: find the first instant whose local time is past it.
    other = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = int(min(first, other).timestamp()), int(max(first, other).timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if _local_wall(datetime.fromtimestamp(middle, UTC), zone) > wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


@dataclass(frozen=True, slots=True)
class Cron:
    """Slots from a cron expression, read in a time zone."""

    expression: str
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after ``moment`` (aware), in UTC."""
        wall = _local_wall(moment, self.zone)
        for _ in range(10_000):  # a repeated hour of a minutely schedule takes 60 steps
            wall = _next_wall(self.expression, wall)
            instant = _resolve(wall, self.zone)
            if instant > moment:
                return instant
        raise RuntimeError(f"cron {self.expression!r}: no slot found after {moment}")  # pragma: no cover

    def describe(self) -> str:
        return f"cron {self.expression} ({self.zone.key})"


@dataclass(frozen=True, slots=True)
class Every:
    """Slots every ``seconds``, counted from the Unix epoch."""

    seconds: int

    def _index(self, moment: datetime) -> int:
        return (moment - _EPOCH) // _MICRO // (self.seconds * 1_000_000)

    def _slot(self, index: int) -> datetime:
        return _EPOCH + timedelta(seconds=index * self.seconds)

    def next_after(self, moment: datetime) -> datetime:
        return self._slot(self._index(moment) + 1)

    def at_or_before(self, moment: datetime) -> datetime:
        return self._slot(self._index(moment))

    def describe(self) -> str:
        return f"every {_human(self.seconds)}"


Timing = Cron | Every


def _human(seconds: int) -> str:
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def upcoming(timing: Timing, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` slots strictly after ``after``."""
    slots: list[datetime] = []
    moment = after
    for _ in range(count):
        moment = timing.next_after(moment)
        slots.append(moment)
    return slots


def slots_between(timing: Timing, start: datetime, end: datetime, limit: int) -> list[datetime]:
    """Slots in ``(start, end]``, oldest first, at most ``limit`` of them."""
    found: list[datetime] = []
    moment = start
    while len(found) < limit:
        moment = timing.next_after(moment)
        if moment > end:
            break
        found.append(moment)
    return found


def count_slots(timing: Timing, start: datetime, end: datetime, cap: int = 10_000) -> int:
    """How many slots lie in ``(start, end]`` (counted up to ``cap``)."""
    if end <= start:
        return 0
    if isinstance(timing, Every):
        return min(cap, timing._index(end) - timing._index(start))
    return len(slots_between(timing, start, end, cap))


_LOOK_BACK = (3600, 86400, 32 * 86400, 367 * 86400, 9 * 366 * 86400)


def latest_slot(timing: Timing, now: datetime, floor: datetime) -> datetime | None:
    """The newest slot in ``(floor, now]``, if any."""
    if now <= floor:
        return None
    if isinstance(timing, Every):
        slot = timing.at_or_before(now)
        return slot if slot > floor else None
    for window in _LOOK_BACK:
        start = max(floor, now - timedelta(seconds=window))
        first = timing.next_after(start)
        if first <= now:
            latest = first
            while (following := timing.next_after(latest)) <= now:
                latest = following
            return latest
        if start == floor:
            return None
    return None  # pragma: no cover - no cron expression is rarer than once in nine years
