"""``jobs submit KIND --from-file jobs.jsonl``: many jobs at once, all or nothing."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from jobs import db
from jobs.settings import Settings
from tests.support.fixtures import run_jobs

pytestmark = pytest.mark.acceptance

COUNT = 1000


def count(settings: Settings, where: str = "true") -> int:
    with db.transaction(settings) as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM jobs WHERE {where}")).scalar_one())


def broker_idle(client: redis.Redis) -> bool:
    """No message waits in a queue of the test broker db, and none is delivered but unacknowledged."""
    for key in client.scan_iter(count=1000):
        if key.startswith(b"_kombu"):
            continue
        kind = client.type(key)
        if (kind == b"list" and client.llen(key)) or (key == b"unacked" and client.hlen(key)):
            return False
    return True


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_a_thousand_lines_become_a_thousand_jobs_that_all_succeed(platform, clean, broker, tmp_path):
    path = write_lines(tmp_path / "jobs.jsonl", [json.dumps({"message": f"bulk {n}"}) for n in range(COUNT)])

    result = run_jobs("submit", "ping", "--from-file", str(path))
    assert result.returncode == 0, result.stderr
    ids = [uuid.UUID(line) for line in result.stdout.splitlines()]
    assert len(ids) == COUNT
    assert len(set(ids)) == COUNT
    assert f"submitted {COUNT} ping job(s)" in result.stderr
    assert count(clean) == COUNT

    deadline = time.monotonic() + 90
    while (done := count(clean, "state = 'succeeded'")) < COUNT and time.monotonic() < deadline:
        assert count(clean, "state IN ('failed', 'cancelled')") == 0
        time.sleep(0.5)
    assert done == COUNT, f"{done} of {COUNT} succeeded in time"
    # Each job ran its own line's payload, once.
    with db.transaction(clean) as conn:
        matching = conn.execute(
            sa.text(
                "SELECT count(DISTINCT payload->>'message') FROM jobs "
                "WHERE result->>'message' = payload->>'message' AND attempt = 1"
            )
        ).scalar_one()
        returned = conn.execute(sa.text("SELECT array_agg(id) FROM jobs")).scalar_one()
    assert matching == COUNT
    assert set(returned) == set(ids)

    # Let the worker handle every message (the leader's relay may have published some jobs
    # again while the CLI was still publishing), so that no stray delivery reaches the next test.
    deadline = time.monotonic() + 30
    while not broker_idle(broker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert broker_idle(broker), "the worker did not drain the broker in 30 s"
    assert count(clean) == COUNT


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        pytest.param('{"message": "unterminated', "not valid JSON", id="invalid-json"),
        pytest.param('{"message": 42}', "message", id="invalid-payload"),
        pytest.param('["message", "a list"]', "JSON object", id="not-an-object"),
    ],
)
def test_one_bad_line_submits_nothing(clean, tmp_path, bad_line, expected):
    good = [json.dumps({"message": f"fine {n}"}) for n in range(400)]
    # A blank line before the bad one: line numbers are the file's own.
    path = write_lines(tmp_path / "jobs.jsonl", [*good[:300], "", bad_line, *good[300:]])

    result = run_jobs("submit", "ping", "--from-file", str(path))
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "line 302" in lines[0]
    assert expected in lines[0]
    assert result.stdout == ""
    assert count(clean) == 0
