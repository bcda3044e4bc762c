"""Schedules: what fires when, checked once when saved, and the slot arithmetic.

A schedule fires a job of one kind, with one payload, at each of its *slots*:
the instants its cron expression names in its time zone, or the multiples of
its fixed interval counted from the Unix epoch (``every 30s`` fires at :00 and
:30 of each minute, whatever the zone). The leader (``beat.cron``) fires a slot
by inserting a job whose (schedule, slot) pair is unique in the ledger, so a
slot never fires twice, even with two leaders at once.

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

Misfires (slots that passed while no leader ran) follow the schedule's
``misfire`` policy, see ``plan``; ``docs/scheduling.md`` explains it all for
operators. The functions down to ``plan`` are pure; the rest read and write
the ``schedules`` table for the CLI and the leader.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast, get_args
from zoneinfo import ZoneInfo, available_timezones

import sqlalchemy as sa
from cronsim import CronSim, CronSimError
from sqlalchemy.dialects.postgresql import insert as pg_insert

from jobs import db, jsonsafe
from jobs.durations import parse_duration
from jobs.errors import BadInput, PayloadTooLarge
from jobs.kinds import Registry
from jobs.ledger import ACTIVE_STATES
from jobs.schema import jobs, maintenance_runs, schedules
from jobs.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from jobs.producer import JobId, Producer

__all__ = [
    "ALIASES",
    "DEFINITION_COLUMNS",
    "MANUAL",
    "MISFIRE_POLICIES",
    "OVERLAP_POLICIES",
    "TIMING_COLUMNS",
    "Cron",
    "Every",
    "InvalidSchedule",
    "Misfire",
    "Overlap",
    "Plan",
    "ScheduleConflict",
    "ScheduleNotFound",
    "ScheduleSpec",
    "Timing",
    "add",
    "busy_firing",
    "count_slots",
    "describe_timing",
    "edit",
    "fire",
    "fired_by",
    "get",
    "is_manual",
    "latest_slot",
    "list_schedules",
    "maintenance_loops",
    "overlap",
    "parse_cron",
    "parse_every",
    "parse_zone",
    "plan",
    "recent_firings",
    "remove",
    "set_enabled",
    "slots_between",
    "sync_declared",
    "timing_of",
    "trigger",
    "upcoming",
    "validate",
    "view",
]

log = logging.getLogger("jobs.schedules")

Misfire = Literal["skip", "once", "all"]
Overlap = Literal["allow", "skip"]
MISFIRE_POLICIES: tuple[str, ...] = get_args(Misfire)
OVERLAP_POLICIES: tuple[str, ...] = get_args(Overlap)


class InvalidSchedule(BadInput):
    """The schedule is invalid."""


class ScheduleNotFound(BadInput):
    """No schedule has that name."""


class ScheduleConflict(BadInput):
    """The schedule cannot be changed that way."""


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


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with a schedule now: the slots to fire and how far it has been dealt with."""

    fire: tuple[datetime, ...]
    handled_until: datetime
    missed: int = 0


def plan(
    timing: Timing,
    *,
    handled_until: datetime,
    now: datetime,
    misfire: str,
    grace: float,
    catchup: float,
    limit: int = 100,
) -> Plan:
    """Which slots in ``(handled_until, now]`` to fire, by the misfire policy.

    The newest due slot is *on time* when the leader sees it within ``grace``
    seconds of its time; every older due slot was *missed* (no leader ran, or
    the leader stalled for longer than the interval).

    - ``skip``: fire the newest slot only if it is on time; missed ones never fire;
    - ``once``: fire the newest slot, however late, once; older missed ones never fire;
    - ``all``: fire every due slot no older than ``catchup`` seconds (at least
      ``grace``), oldest first, at most ``limit`` per call (the rest on the next).
    """
    latest = latest_slot(timing, now, handled_until)
    if latest is None:
        return Plan((), handled_until)
    if misfire == "all":
        window_start = max(handled_until, now - timedelta(seconds=max(catchup, grace)))
        dropped = count_slots(timing, handled_until, window_start)
        due = slots_between(timing, window_start, now, limit)
        if not due:
            return Plan((), latest, dropped)
        return Plan(tuple(due), due[-1], dropped)
    older = count_slots(timing, handled_until, latest) - 1
    if misfire == "once" or (now - latest).total_seconds() <= grace:
        return Plan((latest,), latest, older)
    return Plan((), latest, older + 1)


def overlap(policy: str, slots: Sequence[datetime], busy: bool) -> tuple[tuple[datetime, ...], int]:
    """Apply the overlap policy: the slots to fire, and how many are skipped.

    With ``skip`` nothing fires while an earlier firing is queued or running,
    and of several due slots only the newest fires (they would overlap each other).
    """
    if policy != "skip" or not slots:
        return tuple(slots), 0
    if busy:
        return (), len(slots)
    return (slots[-1],), len(slots) - 1


# ---------------------------------------------------------------------------------------------------------
# The schedule as saved


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule as declared in code (``beat/declared.py``) or given on the command line.

    Give ``cron`` (5 fields or an alias like ``@daily``, read in ``timezone``)
    or ``every`` (seconds, or a duration like ``"30s"``), not both.
    """

    name: str
    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: float | str | None = None
    timezone: str = "UTC"
    misfire: Misfire = "once"
    overlap: Overlap = "allow"
    queue: str | None = None
    priority: int | None = None
    enabled: bool = True


#: The columns that say when a schedule fires; changing one starts it afresh from now.
TIMING_COLUMNS = ("cron", "every_seconds", "timezone")
DEFINITION_COLUMNS = ("kind", "payload", "queue", "priority", *TIMING_COLUMNS, "misfire", "overlap")


def validate(
    spec: ScheduleSpec, registry: Registry, *, max_payload_bytes: int | None = None
) -> dict[str, Any]:
    """The schedule's column values, checked; raises a ``BadInput`` naming the first problem.

    The payload is validated against the kind's model here, when the schedule
    is saved, and stored in its validated form.
    """
    if not _NAME.match(spec.name):
        raise InvalidSchedule(
            f"invalid schedule name {spec.name!r}: use up to 100 letters, digits and . _ : - "
            "(starting with a letter or digit)"
        )
    if (spec.cron is None) == (spec.every is None):
        raise InvalidSchedule(f"schedule {spec.name}: give a cron expression or an interval (one of them)")
    cron = parse_cron(spec.cron) if spec.cron is not None else None
    every = parse_every(spec.every) if spec.every is not None else None
    zone = parse_zone(spec.timezone)
    if spec.misfire not in MISFIRE_POLICIES:
        raise InvalidSchedule(f"invalid misfire policy {spec.misfire!r}: use {', '.join(MISFIRE_POLICIES)}")
    if spec.overlap not in OVERLAP_POLICIES:
        raise InvalidSchedule(f"invalid overlap policy {spec.overlap!r}: use {', '.join(OVERLAP_POLICIES)}")
    if spec.priority is not None and not 0 <= spec.priority <= 9:
        raise InvalidSchedule(f"priority {spec.priority} is out of range: use 0 (first) to 9 (last)")
    if spec.queue is not None and not spec.queue.strip():
        raise InvalidSchedule("a queue name cannot be empty")
    unstorable = jsonsafe.unstorable(spec.queue, root="queue") if spec.queue is not None else None
    if unstorable is not None:
        raise InvalidSchedule(f"schedule {spec.name}: {unstorable}")
    declared = registry.get(spec.kind)
    payload = declared.dump(declared.validate(dict(spec.payload)))
    size = len(declared.to_json(payload).encode())
    if max_payload_bytes is not None and size > max_payload_bytes:
        raise PayloadTooLarge(
            f"payload of {size} bytes is over the limit of {max_payload_bytes} bytes (JOBS_MAX_PAYLOAD_BYTES)"
        )
    return {
        "name": spec.name,
        "kind": declared.name,
        "payload": payload,
        "queue": spec.queue,
        "priority": spec.priority,
        "cron": cron,
        "every_seconds": every,
        "timezone": zone.key,
        "misfire": spec.misfire,
        "overlap": spec.overlap,
        "enabled": spec.enabled,
    }


def timing_of(row: Any) -> Timing:
    """A saved schedule's timing; ``InvalidSchedule`` for a cron expression saved under older rules."""
    if row.cron is not None:
        return Cron(parse_cron(row.cron), parse_zone(row.timezone))
    return Every(int(row.every_seconds))


def describe_timing(row: Any) -> str:
    if row.cron is not None:
        return f"cron {row.cron} ({row.timezone})" if row.timezone != "UTC" else f"cron {row.cron}"
    return Every(int(row.every_seconds)).describe()


def _spec_of(row: Any) -> ScheduleSpec:
    return ScheduleSpec(
        name=row.name,
        kind=row.kind,
        payload=row.payload,
        cron=row.cron,
        every=row.every_seconds,
        timezone=row.timezone,
        misfire=row.misfire,
        overlap=row.overlap,
        queue=row.queue,
        priority=row.priority,
        enabled=row.enabled,
    )


MANUAL = "manual"


def fired_by(name: str, manual_by: str | None = None) -> str:
    """The ``submitted_by`` of a firing: ``schedule:NAME``, or ``schedule:NAME manual (WHO)``."""
    return f"schedule:{name}" if manual_by is None else f"schedule:{name} {MANUAL} ({manual_by})"


def fire(producer: Producer, session: Session, row: Any, slot: datetime, *, submitted_by: str) -> JobId:
    """Submit one firing of a schedule row for ``slot``, in ``session``'s transaction.

    The (schedule, slot) pair is unique: a slot fired before returns that job, with ``duplicate`` set.
    """
    return producer.submit(
        row.kind,
        row.payload,
        queue=row.queue,
        priority=row.priority,
        session=session,
        schedule_name=row.name,
        schedule_slot=slot,
        submitted_by=submitted_by,
    )


def is_manual(submitted_by: str | None) -> bool:
    return bool(submitted_by) and f" {MANUAL} (" in str(submitted_by)


# ---------------------------------------------------------------------------------------------------------
# Reading and changing schedules (the CLI's side; the leader fires them in ``beat.cron``)


def _db_now(conn: sa.Connection) -> datetime:
    return conn.execute(sa.select(sa.func.now())).scalar_one()


def _locked(conn: sa.Connection, name: str) -> Any:
    row = conn.execute(sa.select(schedules).where(schedules.c.name == name).with_for_update()).first()
    if row is None:
        raise ScheduleNotFound(f"no schedule named {name!r} (see jobs schedule list)")
    return row


def _declared_in_code(name: str, action: str) -> ScheduleConflict:
    return ScheduleConflict(
        f"schedule {name!r} is declared in code (beat/declared.py): {action} it there; "
        f"the CLI can only pause, resume and trigger it"
    )


def add(settings: Settings, registry: Registry, spec: ScheduleSpec, *, by: str) -> dict[str, Any]:
    """Save a new schedule; it fires from its first slot after now."""
    values = validate(spec, registry, max_payload_bytes=settings.max_payload_bytes)
    with db.transaction(settings) as conn:
        inserted = conn.execute(
            pg_insert(schedules)
            .values(**values, updated_by=by)
            .on_conflict_do_nothing(index_elements=[schedules.c.name])
            .returning(schedules.c.name)
        ).first()
        if inserted is None:
            raise ScheduleConflict(
                f"schedule {spec.name!r} already exists (change it with jobs schedule edit {spec.name})"
            )
    return get(settings, spec.name)


def get(settings: Settings, name: str) -> dict[str, Any]:
    """One schedule, as ``view`` shows it."""
    with db.transaction(settings) as conn:
        rows = _select(conn, schedules.c.name == name)
        now = _db_now(conn)
    if not rows:
        raise ScheduleNotFound(f"no schedule named {name!r} (see jobs schedule list)")
    return view(rows[0], now)


def list_schedules(settings: Settings) -> list[dict[str, Any]]:
    """Every schedule, by name, as ``view`` shows it."""
    with db.transaction(settings) as conn:
        rows = _select(conn, sa.true())
        now = _db_now(conn)
    return [view(row, now) for row in rows]


def _select(conn: sa.Connection, where: sa.ColumnElement[bool]) -> list[Any]:
    query = (
        sa.select(schedules, jobs.c.state.label("last_job_state"))
        .outerjoin(jobs, jobs.c.id == schedules.c.last_job_id)
        .where(where)
        .order_by(schedules.c.name)
    )
    return list(conn.execute(query).all())


def view(row: Any, now: datetime, *, count: int = 3) -> dict[str, Any]:
    """A schedule for people and scripts: its definition, next slots (in its zone), last firing."""
    zone = parse_zone(row.timezone)
    following: list[datetime] = []
    problem = None
    if row.enabled:
        try:
            following = upcoming(timing_of(row), max(now, row.handled_until), count)
        except InvalidSchedule as error:  # saved under older, looser rules: the leader cannot fire it either
            where = "in beat/declared.py" if row.declared else f"with jobs schedule edit {row.name} --cron"
            problem = f"{error.message} (fix it {where})"
    last_job = None
    if row.last_job_id is not None:
        last_job = {"id": str(row.last_job_id), "state": row.last_job_state or "pruned"}
    return {
        "name": row.name,
        "kind": row.kind,
        "payload": row.payload,
        "cron": row.cron,
        "every_seconds": row.every_seconds,
        "timing": describe_timing(row),
        "timezone": row.timezone,
        "enabled": row.enabled,
        "declared": row.declared,
        "misfire": row.misfire,
        "overlap": row.overlap,
        "queue": row.queue,
        "priority": row.priority,
        "next": [slot.astimezone(zone) for slot in following],
        "handled_until": row.handled_until,
        "last_slot": row.last_slot.astimezone(zone) if row.last_slot else None,
        "last_fired_at": row.last_fired_at,
        "last_job": last_job,
        "last_skip_at": row.last_skip_at,
        "last_skip_reason": row.last_skip_reason,
        "skipped": row.skipped,
        "last_error": problem or row.last_error,
        "last_error_at": now if problem else row.last_error_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "updated_by": row.updated_by,
    }


def edit(settings: Settings, registry: Registry, name: str, *, by: str, **changes: Any) -> dict[str, Any]:
    """Change a schedule made with the CLI; changing when it fires starts it afresh from now.

    ``changes`` are ``ScheduleSpec`` fields; ``params`` merges fields into the
    current payload (``payload`` replaces it). Giving ``cron`` clears the
    interval and the other way round.
    """
    with db.transaction(settings) as conn:
        row = _locked(conn, name)
        if row.declared:
            raise _declared_in_code(name, "change")
        params = changes.pop("params", None)
        updates = {key: value for key, value in changes.items() if value is not None}
        if "cron" in updates and "every" in updates:
            raise InvalidSchedule("give a cron expression or an interval, not both")
        if "cron" in updates:
            updates["every"] = None
        elif "every" in updates:
            updates["cron"] = None
        spec = dataclasses.replace(_spec_of(row), **updates)
        if params:
            spec = dataclasses.replace(spec, payload={**spec.payload, **params})
        values = validate(spec, registry, max_payload_bytes=settings.max_payload_bytes)
        changed = {key: values[key] for key in DEFINITION_COLUMNS if values[key] != getattr(row, key)}
        if changed:
            extra: dict[str, Any] = {"updated_at": sa.func.now(), "updated_by": by}
            if set(changed) & set(TIMING_COLUMNS):
                extra["handled_until"] = sa.func.now()
            conn.execute(sa.update(schedules).where(schedules.c.name == name).values(**changed, **extra))
    return get(settings, name)


def set_enabled(settings: Settings, name: str, enabled: bool, *, by: str) -> tuple[dict[str, Any], bool]:
    """Pause or resume; ``(schedule, changed)``. Resuming fires from the next slot, not the paused ones."""
    with db.transaction(settings) as conn:
        row = _locked(conn, name)
        changed = row.enabled != enabled
        if changed:
            values: dict[str, Any] = {"enabled": enabled, "updated_at": sa.func.now(), "updated_by": by}
            if enabled:
                values["handled_until"] = sa.func.now()
            conn.execute(sa.update(schedules).where(schedules.c.name == name).values(**values))
    return get(settings, name), changed


def remove(settings: Settings, name: str) -> dict[str, Any]:
    """Delete a schedule made with the CLI; the jobs it fired stay in the ledger."""
    shown = get(settings, name)
    with db.transaction(settings) as conn:
        row = _locked(conn, name)
        if row.declared:
            raise _declared_in_code(name, "remove")
        conn.execute(sa.delete(schedules).where(schedules.c.name == name))
    return shown


def trigger(producer: Producer, name: str, *, by: str) -> tuple[JobId, datetime]:
    """Fire a schedule now, once, marked as manual (even when paused; the overlap policy is not applied)."""
    settings = producer.settings
    with db.ledger_errors(settings.database_url), db.session(settings) as session, session.begin():
        conn = session.connection()
        row = _locked(conn, name)
        slot = cast(datetime, conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one())
        job = fire(producer, session, row, slot, submitted_by=fired_by(name, manual_by=by))
        conn.execute(
            sa.update(schedules)
            .where(schedules.c.name == name)
            .values(last_fired_at=sa.func.now(), last_job_id=job)
        )
    log.info("schedule %s fired by hand (%s) as job %s", name, by, job)
    return job, slot


def recent_firings(settings: Settings, name: str, limit: int = 10) -> list[dict[str, Any]]:
    """The newest jobs a schedule fired, newest slot first."""
    with db.transaction(settings) as conn:
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.schedule_slot, jobs.c.state, jobs.c.created_at, jobs.c.submitted_by)
            .where(jobs.c.schedule_name == name)
            .order_by(jobs.c.schedule_slot.desc())
            .limit(limit)
        ).all()
    return [
        {
            "id": str(row.id),
            "slot": row.schedule_slot,
            "state": row.state,
            "created_at": row.created_at,
            "manual": is_manual(row.submitted_by),
        }
        for row in rows
    ]


def busy_firing(conn: sa.Connection, name: str) -> tuple[str, str] | None:
    """A firing of the schedule still queued or running (or waiting to), as ``(job id, state)``."""
    row = conn.execute(
        sa.select(jobs.c.id, jobs.c.state)
        .where(jobs.c.schedule_name == name, jobs.c.state.in_(ACTIVE_STATES))
        .limit(1)
    ).first()
    return None if row is None else (str(row.id), str(row.state))


def maintenance_loops(settings: Settings) -> list[dict[str, Any]]:
    """When each of the leader's maintenance loops last ran, as recorded by the leader."""
    with db.transaction(settings) as conn:
        rows = conn.execute(sa.select(maintenance_runs).order_by(maintenance_runs.c.name)).all()
        now = _db_now(conn)
    return [
        {
            "name": row.name,
            "interval_seconds": row.interval_seconds,
            "last_run_at": row.last_run_at,
            "seconds_ago": max(0.0, (now - row.last_run_at).total_seconds()),
            "last_result": row.last_result,
            "last_error": row.last_error,
            "leader": row.leader,
        }
        for row in rows
    ]


def sync_declared(settings: Settings, registry: Registry, declared: Sequence[ScheduleSpec]) -> list[str]:
    """Make the table hold the schedules declared in code; returns what changed, one line each.

    A declared schedule's definition comes from code; whether it is paused is
    the operators' (kept across syncs). A declared schedule no longer in the
    list is deleted. An invalid declaration is logged and left out.
    """
    checked: list[dict[str, Any]] = []
    for spec in declared:
        try:
            checked.append(validate(spec, registry, max_payload_bytes=settings.max_payload_bytes))
        except BadInput as error:
            log.error("declared schedule %r is invalid and was not synced: %s", spec.name, error.message)
    names = {spec.name for spec in declared}
    report: list[str] = []
    with db.transaction(settings) as conn:
        existing = {row.name: row for row in conn.execute(sa.select(schedules).with_for_update()).all()}
        for values in checked:
            name = values["name"]
            old = existing.get(name)
            if old is None:
                conn.execute(sa.insert(schedules).values(**values, declared=True, updated_by="code"))
                report.append(f"added declared schedule {name}")
                continue
            changed = {key: values[key] for key in DEFINITION_COLUMNS if values[key] != getattr(old, key)}
            if not changed and old.declared:
                continue
            extra: dict[str, Any] = {"declared": True, "updated_at": sa.func.now(), "updated_by": "code"}
            if set(changed) & set(TIMING_COLUMNS):
                extra["handled_until"] = sa.func.now()
            conn.execute(sa.update(schedules).where(schedules.c.name == name).values(**changed, **extra))
            note = "" if old.declared else " (it was made with the CLI; code owns it now)"
            report.append(f"updated declared schedule {name}{note}")
        for name, row in existing.items():
            if row.declared and name not in names:
                conn.execute(sa.delete(schedules).where(schedules.c.name == name))
                report.append(f"removed declared schedule {name} (no longer declared in code)")
    for line in report:
        log.info("%s", line)
    return report
