"""A kind's unique window and debounce through the real ``jobs`` command, as a user meets them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db
from jobs.schema import jobs
from tests.support.fixtures import run_jobs, run_jobs_together

pytestmark = pytest.mark.acceptance


def submitted(result: Any) -> uuid.UUID:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    (line,) = result.stdout.splitlines()
    return uuid.UUID(line)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def stored(settings: Any) -> list[dict[str, Any]]:
    with db.transaction(settings) as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(jobs).order_by(jobs.c.created_at))]


def test_submit_says_when_a_job_is_a_duplicate_in_a_unique_window(clean):
    first = submitted(run_jobs("submit", "test.unique", "-p", "tenant=acme"))
    again = run_jobs("submit", "test.unique", "-p", "tenant=acme", "-p", "note=later")
    assert submitted(again) == first
    assert one_line(again.stderr) == f"duplicate of job {first}: same tenant within 60s (unique window)"

    as_json = run_jobs("submit", "test.unique", "-p", "tenant=acme", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "id": str(first),
        "duplicate": True,
        "reason": "unique",
        "published": False,
        "held": False,
    }

    other = run_jobs("submit", "test.unique", "-p", "tenant=globex")
    assert submitted(other) != first
    assert other.stderr.strip() == ""
    assert [row["payload"] for row in stored(clean)] == [
        {"tenant": "acme", "note": ""},
        {"tenant": "globex", "note": ""},
    ]


def test_submit_says_when_a_job_is_debounced_and_refuses_a_delay(clean):
    first = submitted(run_jobs("submit", "test.debounce", "-p", "tenant=acme", "-p", "note=1"))
    again = run_jobs("submit", "test.debounce", "-p", "tenant=acme", "-p", "note=2")
    assert submitted(again) == first
    assert one_line(again.stderr) == (
        f"debounced into job {first}: it now runs 30s from now, with this payload"
    )
    (row,) = stored(clean)
    assert row["state"] == "scheduled"
    assert row["payload"] == {"tenant": "acme", "note": "2"}

    delayed = run_jobs("submit", "test.debounce", "-p", "tenant=acme", "--delay", "10s")
    assert delayed.returncode == 2
    assert one_line(delayed.stderr) == (
        "error: kind test.debounce debounces: its job runs 30s after the last submission, "
        "so it takes no delay or time"
    )


def test_submit_from_a_file_refuses_a_kind_with_a_unique_window(clean, tmp_path: Path):
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"tenant": "a"}\n{"tenant": "b"}\n')
    result = run_jobs("submit", "test.unique", "--from-file", str(lines))
    assert result.returncode == 2
    assert (
        one_line(result.stderr) == "error: kind test.unique has a unique window: submit its jobs one by one"
    )
    assert stored(clean) == []


def test_kinds_show_the_unique_window_and_the_debounce(clean):
    listing, shown, debounced = run_jobs_together(
        ("kinds", "--json"), ("kinds", "show", "test.unique"), ("kinds", "show", "test.debounce")
    )
    assert listing.returncode == shown.returncode == debounced.returncode == 0
    by_name = {kind["name"]: kind for kind in json.loads(listing.stdout)}
    assert by_name["test.unique"]["unique"] == {"fields": ["tenant"], "period": 60.0}
    assert by_name["test.unique"]["debounce"] is None
    assert by_name["test.unique_unfinished"]["unique"] == {"fields": ["tenant"], "period": None}
    assert by_name["test.debounce"]["debounce"] == {"fields": ["tenant"], "period": 30.0}
    assert by_name["ping"]["unique"] is None
    assert by_name["ping"]["debounce"] is None
    assert "unique: same tenant within 60s" in shown.stdout
    assert "debounce" not in shown.stdout.split("payload schema")[0]
    assert "debounce: same tenant: runs 30s after the last submission" in debounced.stdout
