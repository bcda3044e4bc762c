"""Human durations (``90``, ``30s``, ``10m``, ``1h30m``, ``2d``) and times (ISO 8601)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["parse_duration", "parse_instant"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ``ValueError`` with what was expected."""
    value = text.strip().lower().replace(" ", "")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError(f"{text!r} is negative")
        return seconds
    parts = _PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"{text!r} is not a duration like 90, 30s, 10m, 1h30m or 2d")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def parse_instant(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC if it has no offset), or a duration meaning "that long ago"."""
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time like 2026-01-31T09:00:00+01:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
