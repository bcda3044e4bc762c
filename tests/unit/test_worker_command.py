"""``jobs worker``: the Celery command it becomes, and ``-P batched``'s supervised processes."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from jobs import batched_pool, logs
from jobs.cli import processes
from jobs.cli.main import cli

pytestmark = pytest.mark.unit


def test_a_prefork_worker_never_batches_whatever_the_environment_says(monkeypatch):
    seen: dict[str, Any] = {}

    def exec_(argv: list[str], env: dict[str, str] | None = None) -> None:
        seen.update(argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(processes, "_exec", exec_)
    monkeypatch.setenv("JOBS_WORKER_BATCHED", "1")  # as a stray .env line would
    result = CliRunner().invoke(cli, ["worker", "-c", "1", "-Q", "default"])
    assert result.exit_code == 0, result.output
    assert seen["env"]["JOBS_WORKER_BATCHED"] == "0"
    assert seen["argv"][seen["argv"].index("-P") + 1] == "prefork"


def test_batched_supervises_single_process_workers_that_batch(monkeypatch):
    seen: dict[str, Any] = {}

    def run(self: batched_pool.Supervisor) -> int:
        seen.update(env=self.env, argv=self.argv_for("w-1.abcd@host"), slots=len(self.slots))
        return 0

    monkeypatch.setattr(batched_pool.Supervisor, "run", run)
    monkeypatch.setattr(logs, "plain", lambda settings, level="INFO": None)
    monkeypatch.delenv("REMAP_SIGTERM", raising=False)
    result = CliRunner().invoke(
        cli, ["worker", "-P", "batched", "-c", "3", "-Q", "default", "--without-gossip"]
    )
    assert result.exit_code == 0, result.output
    assert seen["slots"] == 3
    assert (seen["env"]["JOBS_WORKER_BATCHED"], seen["env"]["REMAP_SIGTERM"]) == ("1", "SIGQUIT")
    argv = seen["argv"]
    assert argv[argv.index("-P") + 1 : argv.index("-P") + 4] == ["solo", "-c", "1"]
    assert argv[argv.index("-n") + 1] == "w-1.abcd@host"
    assert argv[argv.index("-Q") + 1] == "default"
    assert argv[-1] == "--without-gossip"  # extra arguments reach each worker process
