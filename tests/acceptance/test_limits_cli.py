"""``jobs limits`` with the real command: set, list, show, remove; exit codes, one-line errors and
``--json``; and ``jobs explain``, ``status`` and ``list`` on a held job.

No worker or leader runs: the held jobs and their slots are written by hand
(``tests.support.limits``), so what the commands say is what the ledger holds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.acceptance.test_completion import complete
from tests.support.fixtures import run_jobs, run_jobs_together
from tests.support.limits import limited_job

pytestmark = pytest.mark.acceptance


def ok(*args: str) -> Any:
    """Run ``jobs ARGS --json``; its exit code must be 0; returns the JSON."""
    result = run_jobs(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(*args: str) -> str:
    """Run ``jobs ARGS``; it must exit 2 with one line and no traceback; returns the line."""
    result = run_jobs(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_set_list_show_change_and_remove_a_limit(clean):
    listed, human = run_jobs_together(("limits", "--json"), ("limits",))
    assert json.loads(listed.stdout)["limits"] == []
    assert "no limits" in human.stderr

    made = ok("limits", "set", "work-cap", "--kind", "test.work", "--key", "key", "--concurrency", "2")
    assert made["admitted"] == 0
    assert made["limit"] | {"created_at": None, "updated_at": None} == {
        "name": "work-cap",
        "kind": "test.work",
        "queue": None,
        "key": "key",
        "concurrency": 2,
        "rate": None,
        "rate_count": None,
        "period_seconds": None,
        "burst": 0,
        "declared": False,
        "created_at": None,
        "updated_at": None,
        "updated_by": made["limit"]["updated_by"],
    }
    assert made["limit"]["updated_by"].startswith("cli")
    rate = run_jobs("limits", "set", "ping-api", "--kind", "ping", "--rate", "20/s", "--burst", "5")
    assert rate.returncode == 0, rate.stderr
    assert "limit ping-api set: kind ping, at most 20/s (burst 5)" in rate.stderr

    for _ in range(3):
        limited_job(clean, "work-cap", "42")
    limited_job(clean, "work-cap", "42", state="running", admitted=30, started=30)
    limited_job(clean, "work-cap", "7", state="running", admitted=10, started=10)

    listed = ok("limits")
    assert [limit["name"] for limit in listed["limits"]] == ["ping-api", "work-cap"]
    cap = listed["limits"][1]
    assert (cap["target"], cap["definition"], cap["running"], cap["waiting"]) == (
        "kind test.work per key",
        "2 at once",
        2,
        3,
    )
    assert [(key["key"], key["running"], key["waiting"]) for key in cap["keys"]] == [
        ("42", 1, 3),
        ("7", 1, 0),
    ]

    shown, human = run_jobs_together(("limits", "show", "work-cap", "--json"), ("limits", "show", "work-cap"))
    assert json.loads(shown.stdout)["keys"][0]["key"] == "42"
    assert "key=42" in human.stdout
    assert "1/2" in human.stdout

    raised = ok("limits", "set", "work-cap", "--concurrency", "5")  # keeps what it limits
    assert (raised["limit"]["kind"], raised["limit"]["key"], raised["limit"]["concurrency"]) == (
        "test.work",
        "key",
        5,
    )

    gone = ok("limits", "remove", "work-cap")
    assert (gone["removed"], gone["restored"], gone["limit"]["name"]) == (True, None, "work-cap")
    assert refused("limits", "show", "work-cap") == "error: no limit named 'work-cap' (see jobs limits)"
    assert "(did you mean 'ping-api'?)" in refused("limits", "remove", "ping-apl")
    assert "ping-api" in complete("jobs limits show p")[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--kind", "test.wrok", "--concurrency", "2"),
            "unknown job kind 'test.wrok' (did you mean 'test.work'?)",
        ),
        (
            ("--kind", "test.work", "--key", "tenant", "--concurrency", "2"),
            "kind 'test.work' has no field 'tenant'",
        ),
        (("--kind", "test.work", "--rate", "0/s"), "must allow at least one start per period"),
        (
            ("--kind", "test.work", "--concurrency", "2", "--rate", "1/s"),
            "give --concurrency N or --rate N/PERIOD",
        ),
        (("--queue", "mail", "--key", "key", "--concurrency", "2"), "--key is a payload field"),
        (("--concurrency", "2"), "limit 'cap' is new: say what it limits"),
    ],
)
def test_bad_input_exits_2_with_one_line(clean, args, message):
    assert message in refused("limits", "set", "cap", *args)


def test_an_existing_limit_keeps_its_target(clean):
    ok("limits", "set", "cap", "--queue", "mail", "--concurrency", "2")
    line = refused("limits", "set", "cap", "--kind", "ping", "--concurrency", "2")
    assert "limit 'cap' limits queue mail: to limit something else, remove it first" in line


def test_explain_status_and_list_of_a_held_job(clean):
    ok("limits", "set", "tenant-cap", "--kind", "test.work", "--key", "key", "--concurrency", "2")
    for started in (200, 100):
        limited_job(clean, "tenant-cap", "42", state="running", admitted=started, started=started)
    for waited in (300, 250):
        limited_job(clean, "tenant-cap", "42", waited=waited)
    job = limited_job(clean, "tenant-cap", "42", waited=100)

    as_json, human = run_jobs_together(("explain", str(job), "--json"), ("explain", str(job)))
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["state"] == "held"
    assert [reason["code"] for reason in report["reasons"]] == ["limit", "no_leader"]
    assert report["limits"][0] | {"waiting_since": None, "oldest_started_at": None} == {
        "limit": "tenant-cap",
        "definition": "2 at once",
        "target": "kind test.work per key",
        "key": "42",
        "waiting_since": None,
        "admitted_at": None,
        "running": 2,
        "waiting": 3,
        "ahead": 2,
        "oldest_started_at": None,
        "tat": None,
        "last_admitted_at": None,
    }
    assert "waiting for limit tenant-cap, key key=42: 2/2 running (oldest started 3m" in human.stdout
    assert "2 waiting ahead of it" in human.stdout

    status, listed = run_jobs_together(("status", str(job)), ("list", "--state", "held", "--json"))
    assert status.returncode == 0, status.stderr
    assert "held (waiting for its limits" in status.stdout
    assert json.loads(listed.stdout)["total"] == 3


def test_submit_says_a_job_is_held_not_that_redis_is_down(clean):
    from jobs.limits import Limit
    from tests.support.limits import set_limit

    set_limit(clean, Limit("one-at-once", concurrency=1, kind="test.tenant"))
    first = run_jobs("submit", "test.tenant", "-p", "tenant=a", "-p", "seconds=30")
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    second = run_jobs("submit", "test.tenant", "-p", "tenant=a", "--json")
    assert second.returncode == 0, second.stderr
    shown = json.loads(second.stdout)
    assert (shown["held"], shown["published"]) == (True, False)
    assert "unreachable" not in second.stderr
    assert "held: its limits have no room now" in second.stderr
