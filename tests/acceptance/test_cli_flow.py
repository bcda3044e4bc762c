"""The core flows through the real ``jobs`` command, against a real worker and leader.

Each test drives the CLI as a user does (a subprocess per command) and checks
what the CLI prints and exits with, and what the ledger holds afterwards.
"""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import db
from jobs.settings import Settings
from tests.support.fixtures import effects, run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance


def job_id_from(result: Any) -> uuid.UUID:
    """The id ``jobs submit`` printed: exactly one line on stdout."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"expected one id on stdout, got: {result.stdout!r}"
    return uuid.UUID(lines[0])


def status_json(job_id: uuid.UUID) -> dict[str, Any]:
    result = run_jobs("status", str(job_id), "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def status_text(job_id: uuid.UUID) -> str:
    # Wide enough that the attempts table does not wrap the error messages.
    result = run_jobs("status", str(job_id), env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


def job_count(settings: Settings) -> int:
    with db.transaction(settings) as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one())


def test_submit_ping_succeeds(platform, clean):
    result = run_jobs("submit", "ping", "-p", "message=hello acceptance")
    job_id = job_id_from(result)

    wait_for_state(clean, job_id)
    job = status_json(job_id)
    assert job["id"] == str(job_id)
    assert job["kind"] == "ping"
    assert job["state"] == "succeeded"
    assert job["terminal"] is True
    assert job["attempt"] == 1
    assert job["result"]["message"] == "hello acceptance"
    assert job["submitted_by"].startswith("cli")
    assert [a["outcome"] for a in job["attempts"]] == ["succeeded"]


def test_failing_kind_retries_then_fails_with_every_error_shown(platform, clean):
    job_id = job_id_from(run_jobs("submit", "test.fail"))
    wait_for_state(clean, job_id)

    job = status_json(job_id)
    assert job["state"] == "failed"
    assert (job["attempt"], job["max_attempts"]) == (3, 3)
    assert job["error"]["type"] == "RuntimeError"
    assert job["error"]["message"] == "boom on attempt 3"
    attempts = job["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["outcome"] for a in attempts] == ["error", "error", "error"]
    for number, attempt in enumerate(attempts, start=1):
        assert attempt["error"]["type"] == "RuntimeError"
        assert attempt["error"]["message"] == f"boom on attempt {number}"
        assert "Traceback" in attempt["error"]["traceback"]
    # Between attempts the job waited in ``retrying`` for its backoff (0.2 s for test.fail):
    # the next attempt cannot start before the previous one's finish plus the backoff.
    for previous, following in itertools.pairwise(attempts):
        gap = _at(following["started_at"]) - _at(previous["finished_at"])
        assert gap >= timedelta(seconds=0.2), f"attempt {following['attempt']} started after only {gap}"

    text = status_text(job_id)
    assert "failed" in text
    assert "3 of 3" in text
    for number in (1, 2, 3):
        assert f"RuntimeError: boom on attempt {number}" in text, text


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_wait_exits_0_when_the_job_succeeds(platform, clean):
    result = run_jobs("submit", "ping", "--wait", "--timeout", "30s")
    assert result.returncode == 0, result.stderr
    job_id = job_id_from(result)
    assert wait_for_state(clean, job_id, timeout=1)["state"] == "succeeded"
    assert "succeeded" in result.stderr


def test_wait_exits_1_when_the_job_fails(platform, clean):
    result = run_jobs("submit", "test.fail", "--max-attempts", "1", "--wait", "--timeout", "30s")
    assert result.returncode == 1, result.stderr
    job_id = uuid.UUID(result.stdout.strip())
    row = wait_for_state(clean, job_id, timeout=1)
    assert (row["state"], row["attempt"], row["max_attempts"]) == ("failed", 1, 1)
    assert "failed" in result.stderr
    assert "boom on attempt 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_wait_exits_124_when_the_timeout_expires_first(platform, clean):
    result = run_jobs("submit", "test.sleep", "-p", "seconds=2.5", "--wait", "--timeout", "0.5s")
    assert result.returncode == 124, result.stderr
    job_id = uuid.UUID(result.stdout.strip())
    assert "stopped waiting" in result.stderr
    # Giving up waiting does not touch the job: it still runs to the end.
    with db.transaction(clean) as conn:
        state = conn.execute(sa.text("SELECT state FROM jobs WHERE id = :i"), {"i": job_id}).scalar_one()
    assert state in ("queued", "running")
    assert wait_for_state(clean, job_id)["state"] == "succeeded"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(("submit", "no.such.kind"), "unknown job kind 'no.such.kind'", id="unknown-kind"),
        pytest.param(("submit", "test.sleep", "-p", "seconds=soon"), "seconds", id="invalid-payload"),
        pytest.param(("submit", "ping", "-p", "nonsense=1"), "nonsense", id="unexpected-field"),
        pytest.param(("submit", "ping", "-p", "message"), "key=value", id="bad-param-syntax"),
        pytest.param(("submit", "ping", "--delay", "soonish"), "soonish", id="bad-delay"),
        pytest.param(("submit", "ping", "--payload", "{not json"), "JSON", id="bad-payload-json"),
        pytest.param(
            ("submit", "ping", "--payload", '{"message": "a\\u0000b"}'),
            "error: invalid payload for kind 'ping': "
            "message: contains a NUL character (\\u0000), which the ledger cannot store",
            id="nul-in-payload",
        ),
        pytest.param(
            ("submit", "test.anything", "--payload", '{"value": {"k": ["\\ud800"]}}'),
            "value.k.0: contains the surrogate code point \\ud800, which the ledger cannot store",
            id="surrogate-in-payload",
        ),
        pytest.param(
            ("submit", "test.anything", "--payload", '{"number": NaN}'),
            "number: is NaN, not a JSON number, which the ledger cannot store",
            id="nan-in-payload",
        ),
        pytest.param(
            ("submit", "test.anything", "-p", "value=[" + "9" * 4301 + "]"),
            "an integer of more than 4300 digits, which the ledger cannot store",
            id="huge-integer",
        ),
        pytest.param(  # a byte that is not UTF-8 reaches Python as a lone surrogate
            ("submit", "ping", "--key", "order\udcff"),
            "error: idempotency key: contains the surrogate code point \\udcff, "
            "which the ledger cannot store",
            id="undecodable-key",
        ),
        pytest.param(
            ("submit", "pnig"), "error: unknown job kind 'pnig' (did you mean 'ping'?)", id="kind-typo"
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_ledger_row(clean, args, expected):
    result = run_jobs(*args)
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    line = one_error_line(result.stderr)
    assert expected in line
    assert result.stdout == ""
    assert job_count(clean) == 0


def test_a_key_reused_for_another_payload_exits_2_naming_the_job(clean):
    first = job_id_from(run_jobs("submit", "ping", "-p", "message=a", "--key", "order-42", "--delay", "1h"))
    again = run_jobs("submit", "ping", "-p", "message=a", "--key", "order-42", "--delay", "1h")
    assert job_id_from(again) == first
    assert "already in use: this is the existing job" in again.stderr
    conflict = run_jobs("submit", "ping", "-p", "message=b", "--key", "order-42")
    assert conflict.returncode == 2, conflict.stderr
    assert f"is already bound to job {first}, whose payload differs" in one_error_line(conflict.stderr)
    assert conflict.stdout == ""
    assert job_count(clean) == 1


def test_a_missing_database_exits_3_saying_how_to_create_it(clean):
    url = sa.make_url(clean.database_url).set(database=f"jobs_missing_{uuid.uuid4().hex[:8]}_test")
    result = run_jobs("submit", "ping", env={"JOBS_DATABASE_URL": url.render_as_string(hide_password=False)})
    assert result.returncode == 3, result.stderr
    line = one_error_line(result.stderr)
    assert f"the database '{url.database}' does not exist" in line
    assert line.endswith("create it with: jobs db upgrade --create-database")


def test_cancel_a_delayed_job_so_it_never_runs(platform, clean, producer):
    job_id = job_id_from(run_jobs("submit", "test.effect", "-p", "key=cancelled", "--delay", "1h"))
    assert wait_for_state(clean, job_id, states=("scheduled",), timeout=1)["state"] == "scheduled"

    result = run_jobs("cancel", str(job_id))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{job_id} cancelled, was scheduled"

    # Let its time come, then let a later delayed job run: the leader stages due jobs
    # oldest first, so by the time the later one has run, the cancelled one had its chance.
    with db.transaction(clean) as conn:
        conn.execute(
            sa.text("UPDATE jobs SET not_before = now() - interval '1 second' WHERE id = :i"), {"i": job_id}
        )
    later = producer.submit("test.effect", {"key": "later"}, delay=0.2)
    assert wait_for_state(clean, later)["state"] == "succeeded"

    job = status_json(job_id)
    assert job["state"] == "cancelled"
    assert job["attempt"] == 0
    assert job["started_at"] is None
    assert job["attempts"] == []
    assert effects(clean, "cancelled") == []


def test_retry_a_failed_job_as_a_new_linked_job(platform, clean, producer):
    old = producer.submit("test.fail", {}, max_attempts=1)
    assert wait_for_state(clean, old)["state"] == "failed"

    result = run_jobs("retry", str(old))
    new = job_id_from(result)
    assert new != old
    assert str(old) in result.stderr

    assert wait_for_state(clean, new)["state"] == "failed"
    job = status_json(new)
    assert job["retry_of"] == str(old)
    assert job["kind"] == "test.fail"
    assert job["max_attempts"] == 1
    assert [a["error"]["message"] for a in job["attempts"]] == ["boom on attempt 1"]
    assert any(line.split() == ["retry", "of", str(old)] for line in status_text(new).splitlines())
    # The old job keeps its own history.
    assert status_json(old)["state"] == "failed"
