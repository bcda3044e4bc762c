"""The built-in ``http.post`` kind against a real HTTP server on 127.0.0.1 (the ``hook`` fixture,
``tests.support.hooks``).

2xx succeeds; 5xx is retried with the kind's backoff (base 5 s); 4xx fails at
once, with the status and an excerpt of the body in the error.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.support.fixtures import run_jobs, wait_for_state

pytestmark = pytest.mark.acceptance


def submitted_id(result: Any) -> uuid.UUID:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return uuid.UUID(lines[0])


def status_json(job_id: uuid.UUID) -> dict[str, Any]:
    result = run_jobs("status", str(job_id), "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_200_succeeds_and_posts_the_json_body(platform, clean, hook):
    hook.script["/ok"] = [(200, "thanks")]
    body = '{"body": {"order": 7, "items": ["a"]}}'
    result = run_jobs(
        "submit", "http.post", "-p", f"url={hook.url}/ok", "--payload", body, "--wait", "--timeout", "20s"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = submitted_id(result)

    row = wait_for_state(clean, job_id, timeout=1)
    assert row["state"] == "succeeded"
    assert row["attempt"] == 1
    assert row["result"] == {"status": 200, "body": "thanks"}
    [(_, headers, body)] = hook.requests_to("/ok")
    assert body == {"order": 7, "items": ["a"]}
    assert headers["Content-Type"] == "application/json"


def test_500_is_retried_after_the_backoff_then_succeeds(platform, clean, hook):
    hook.script["/flaky"] = [(500, "database is warming up"), (200, "ok now")]
    result = run_jobs(
        "submit", "http.post", "-p", f"url={hook.url}/flaky", "--max-attempts", "2",
        "--wait", "--timeout", "20s",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = submitted_id(result)

    job = status_json(job_id)
    assert job["state"] == "succeeded"
    assert (job["attempt"], job["max_attempts"]) == (2, 2)
    assert job["result"] == {"status": 200, "body": "ok now"}
    first, second = job["attempts"]
    assert first["outcome"] == "error"
    assert first["error"]["type"] == "ServerError"
    assert "HTTP 500" in first["error"]["message"]
    assert "database is warming up" in first["error"]["message"]
    assert second["outcome"] == "succeeded"
    assert second["error"] is None
    # http.post waits 5 s (±25 % jitter) before its second attempt.
    gap = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(first["finished_at"])
    assert gap >= timedelta(seconds=3.75), gap
    assert len(hook.requests_to("/flaky")) == 2


def test_404_fails_at_once_with_status_and_body_excerpt(platform, clean, hook):
    hook.script["/missing"] = [(404, "no such hook: " + "x" * 2000)]
    result = run_jobs("submit", "http.post", "-p", f"url={hook.url}/missing", "--wait", "--timeout", "20s")
    assert result.returncode == 1, result.stderr
    job_id = submitted_id(result)
    assert "HTTP 404" in result.stderr

    job = status_json(job_id)
    assert job["state"] == "failed"
    assert (job["attempt"], job["max_attempts"]) == (1, 5)
    [attempt] = job["attempts"]
    assert attempt["outcome"] == "error"
    for error in (job["error"], attempt["error"]):
        assert error["message"].startswith(f"HTTP 404 from {hook.url}/missing")
        assert "no such hook: xxx" in error["message"]
        assert "x" * 2000 not in error["message"]  # an excerpt, not the whole body
    assert len(hook.requests_to("/missing")) == 1
