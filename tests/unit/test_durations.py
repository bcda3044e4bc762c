from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs.durations import parse_duration, parse_instant

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1.5", 1.5),
        ("30s", 30),
        ("10m", 600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("250ms", 0.25),
        ("1w", 604800),
        (" 2h ", 7200),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "10x", "-5", "5m10", "m"])
def test_bad_durations_say_what_is_expected(text):
    with pytest.raises(ValueError, match=r"is not a duration|is negative"):
        parse_duration(text)


def test_instants_are_iso_or_a_duration_ago():
    now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_instant("1h", now=now) == now - timedelta(hours=1)
    assert parse_instant("2026-01-31T09:00:00+01:00") == datetime(2026, 1, 31, 8, 0, tzinfo=UTC)
    assert parse_instant("2026-01-31T09:00:00").tzinfo is UTC
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_instant("yesterday")
