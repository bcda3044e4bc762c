"""Bulk ``jobs cancel`` and ``jobs retry`` through the real command, against the real ledger and broker."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.integration.test_bulk_ops import add_job, replays_of, states
from tests.support.fixtures import run_jobs

pytestmark = pytest.mark.acceptance


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


def test_filters_without_yes_only_count_and_exit_2(clean):
    delayed = [add_job(clean, "scheduled", kind="test.effect") for _ in range(3)]

    result = run_jobs("cancel", "--kind", "test.effect", "--state", "scheduled")

    assert result.returncode == 2, result.stderr
    assert "3 job(s) match; pass --yes to cancel them, or --dry-run to list them" in one_error_line(
        result.stderr
    )
    assert result.stdout == ""
    assert set(states(clean, delayed).values()) == {"scheduled"}


def test_dry_run_lists_the_matching_jobs_and_changes_nothing(clean):
    delayed = [add_job(clean, "scheduled", age=60 * n) for n in (3, 2, 1)]
    add_job(clean, "scheduled", queue="slow")

    text = run_jobs("cancel", "--queue", "default", "--dry-run", env={"COLUMNS": "200"})
    as_json = run_jobs("cancel", "--queue", "default", "--dry-run", "--json")

    assert text.returncode == 0, text.stderr
    listed = [line.split()[0] for line in text.stdout.splitlines()[1:]]
    assert listed == [str(job_id) for job_id in delayed]  # oldest first
    assert "3 job(s) match" in text.stderr
    assert "dry run: nothing changed" in text.stderr
    data = json.loads(as_json.stdout)
    assert data["matched"] == 3
    assert data["dry_run"] is True
    assert [job["id"] for job in data["jobs"]] == [str(job_id) for job_id in delayed]
    assert {job["state"] for job in data["jobs"]} == {"scheduled"}
    assert set(states(clean, delayed).values()) == {"scheduled"}


def test_yes_cancels_every_matching_job_and_reports_it(clean):
    delayed = [add_job(clean, "scheduled") for _ in range(3)]
    queued = add_job(clean, "queued")
    done = add_job(clean, "succeeded")

    result = run_jobs("cancel", "--state", "scheduled", "--state", "queued", "--yes")

    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(
        [f"{job_id} cancelled, was scheduled" for job_id in delayed] + [f"{queued} cancelled, was queued"]
    )
    assert "4 job(s) match" in result.stderr
    assert "cancelled 4 job(s)" in result.stderr
    assert set(states(clean, [*delayed, queued]).values()) == {"cancelled"}
    assert states(clean, [done]) == {done: "succeeded"}


def test_yes_with_json_gives_counts_and_ids(clean):
    delayed = [add_job(clean, "retrying") for _ in range(2)]

    result = run_jobs("cancel", "--kind", "ping", "--yes", "--json")

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["matched"], data["cancelled"], data["skipped"], data["dry_run"]) == (2, 2, 0, False)
    assert [job["id"] for job in data["jobs"]] == [str(job_id) for job_id in delayed]
    assert {(job["was"], job["state"]) for job in data["jobs"]} == {("retrying", "cancelled")}


def test_an_empty_match_is_not_an_error(clean):
    add_job(clean, "succeeded")

    text = run_jobs("cancel", "--kind", "no.such.kind")
    as_json = run_jobs("retry", "--state", "failed", "--yes", "--json")

    assert text.returncode == 0, text.stderr
    assert "no job matches; nothing to do" in text.stderr
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"matched": 0, "dry_run": False, "jobs": []}


def test_bulk_retry_replays_each_job_once_however_often_it_runs(clean):
    failed = [add_job(clean, "failed", kind="test.fail") for _ in range(3)]
    cancelled = add_job(clean, "cancelled", kind="test.fail")

    first = run_jobs("retry", "--kind", "test.fail", "--yes")
    second = run_jobs("retry", "--kind", "test.fail", "--yes", "--json")
    by_id = run_jobs("retry", str(failed[0]))

    assert first.returncode == 0, first.stderr
    new = [uuid.UUID(line) for line in first.stdout.splitlines()]
    assert len(new) == 4
    assert "retried 4 job(s) as new jobs" in first.stderr
    for old in [*failed, cancelled]:
        assert len(replays_of(clean, old)) == 1
    # Run twice: the failed jobs were retried already, so nothing matches (the replays are queued).
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["matched"] == 0
    # By id: the earlier replay is named, nothing new is submitted.
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout.strip() == str(replays_of(clean, failed[0])[0])
    assert "already retried" in by_id.stderr
    assert len(replays_of(clean, failed[0])) == 1


def test_ids_still_act_at_once(clean):
    first, second = add_job(clean, "queued"), add_job(clean, "scheduled")

    result = run_jobs("cancel", str(first), str(second), "--json")

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cancelled"] == 2
    assert set(states(clean, [first, second]).values()) == {"cancelled"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("cancel", "--state", "bogus"), "Invalid value for '--state'"),
        (("cancel", "--since", "yesterday"), "is not an ISO 8601 time"),
        (("cancel", "--state", "succeeded", "--yes"), "cannot cancel succeeded jobs"),
        (("retry", "--state", "queued", "--dry-run"), "cannot retry queued jobs"),
        (("cancel", "--since", "1h", "--until", "2h", "--yes"), "--since must be before --until"),
        (("cancel",), "give job ids, or filters"),
        (("retry", "--kind", "ping", "--yes", "--dry-run"), "--yes and --dry-run exclude each other"),
        (("cancel", str(uuid.UUID(int=1)), "--kind", "ping"), "give job ids or filters, not both"),
        (("cancel", "not-an-id"), "is not a job id"),
        (("cancel", str(uuid.UUID(int=1))), "no job with id"),
    ],
)
def test_bad_filters_and_arguments_exit_2_with_one_line(clean, args, expected):
    queued = add_job(clean, "queued")

    result = run_jobs(*args)

    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert expected in one_error_line(result.stderr)
    assert result.stdout == ""
    assert states(clean, [queued]) == {queued: "queued"}
