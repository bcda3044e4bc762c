"""``jobs worker``: the Celery command it becomes, and ``-P batched``'s supervised processes."""

from __future__ import annotations

import os
from typing import Any

import pytest
from click.testing import CliRunner

from jobs import batched_pool, logs
from jobs.cli import processes
from jobs.cli.main import cli
from jobs.settings import get_settings

pytestmark = pytest.mark.unit


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``jobs worker`` would ``exec``: its argv and environment (nothing is started)."""
    captured: dict[str, Any] = {}

    def exec_(argv: list[str], env: dict[str, str] | None = None) -> None:
        captured.update(argv=argv, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(processes, "_exec", exec_)
    return captured


def test_a_prefork_worker_never_batches_whatever_the_environment_says(monkeypatch, seen):
    monkeypatch.setenv("JOBS_WORKER_BATCHED", "1")  # as a stray .env line would
    result = CliRunner().invoke(cli, ["worker", "-c", "1", "-Q", "default"])
    assert result.exit_code == 0, result.output
    assert seen["env"]["JOBS_WORKER_BATCHED"] == "0"
    assert seen["argv"][seen["argv"].index("-P") + 1] == "prefork"


def test_batches_runs_a_prefork_worker_whose_pool_batches(monkeypatch, seen):
    monkeypatch.delenv("REMAP_SIGTERM", raising=False)
    monkeypatch.setenv("JOBS_WORKER_POOL_BATCHES", "1")  # as a stray .env line would
    plain = CliRunner().invoke(cli, ["worker", "-c", "1", "-Q", "default"])
    assert plain.exit_code == 0, plain.output
    assert (seen["env"]["JOBS_WORKER_POOL_BATCHES"], seen["env"]["REMAP_SIGTERM"]) == ("0", "SIGQUIT")
    seen.clear()
    monkeypatch.setenv("REMAP_SIGTERM", "SIGQUIT")  # as the image sets it
    result = CliRunner().invoke(cli, ["worker", "--batches", "-c", "2", "-Q", "default"])
    assert result.exit_code == 0, result.output
    assert seen["argv"][seen["argv"].index("-P") + 1] == "prefork"
    # SIGTERM is Celery's warm shutdown, which gives the bodies in the pool their window.
    assert (seen["env"]["JOBS_WORKER_POOL_BATCHES"], seen["env"]["REMAP_SIGTERM"]) == ("1", "")


def test_batches_needs_the_prefork_pool(monkeypatch):
    monkeypatch.setattr(processes, "_exec", lambda argv, env=None: pytest.fail("started a worker"))
    result = CliRunner().invoke(cli, ["worker", "-P", "threads", "--batches"])
    assert result.exit_code == 2
    assert "--batches needs -P prefork (got -P threads)" in result.output


def test_batched_supervises_single_process_workers_that_batch(monkeypatch, seen):
    monkeypatch.delenv("REMAP_SIGTERM", raising=False)
    result = CliRunner().invoke(
        cli, ["worker", "-P", "batched", "-c", "3", "-Q", "default", "-n", "w@%h", "--without-gossip"]
    )
    assert result.exit_code == 0, result.output
    # The command becomes the supervisor (same pid), a process that imports almost nothing.
    assert seen["argv"][1:] == ["-m", "jobs.batched_pool"]
    env = seen["env"]
    assert (env["JOBS_WORKER_BATCHED"], env["REMAP_SIGTERM"]) == ("1", "SIGQUIT")
    plan = batched_pool.Plan.from_json(env[batched_pool.PLAN])
    assert (plan.concurrency, plan.name, plan.log_format, plan.loglevel) == (3, "w@%h", "text", "INFO")
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.setattr(batched_pool.Supervisor, "run", lambda self: seen.update(supervisor=self) or 0)
    monkeypatch.setattr(logs, "plain", lambda log_format, level="INFO": None)
    with pytest.raises(SystemExit) as stopped:
        batched_pool.main()
    assert stopped.value.code == 0
    supervisor = seen["supervisor"]
    assert len(supervisor.slots) == 3
    assert batched_pool.PLAN not in supervisor.env  # the worker processes do not get the plan
    assert supervisor.soft_shutdown_timeout == get_settings().worker_soft_shutdown_timeout
    argv = supervisor.argv_for("w-1.abcd@host")
    assert argv[argv.index("-P") + 1 : argv.index("-P") + 4] == ["solo", "-c", "1"]
    assert argv[argv.index("-n") + 1] == "w-1.abcd@host"
    assert argv[argv.index("-Q") + 1] == "default"
    assert argv[-1] == "--without-gossip"  # extra arguments reach each worker process
