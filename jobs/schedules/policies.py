"""Which due slots fire: the misfire policy (``plan``) and the overlap policy (``overlap``); pure.

Misfires are slots that passed while no leader ran (or while it stalled);
overlaps are slots due while an earlier firing is still queued or running.
``docs/scheduling.md`` explains both policies for operators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from jobs.schedules.timing import Timing, count_slots, latest_slot, slots_between

__all__ = ["MISFIRE_POLICIES", "OVERLAP_POLICIES", "Misfire", "Overlap", "Plan", "overlap", "plan"]

Misfire = Literal["skip", "once", "all"]
Overlap = Literal["allow", "skip"]
MISFIRE_POLICIES: tuple[str, ...] = get_args(Misfire)
OVERLAP_POLICIES: tuple[str, ...] = get_args(Overlap)


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
