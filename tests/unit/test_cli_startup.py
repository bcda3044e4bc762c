"""The ``jobs`` command starts fast: what ``import jobs``, ``jobs --help`` and each command module load.

These tests time nothing (``make bench-cli`` does, see docs/performance.md): they check
which modules a fresh interpreter has loaded, which is what the time goes into.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from jobs.cli import main as cli_main
from jobs.cli import schedule as schedule_cli

pytestmark = pytest.mark.unit

#: Libraries that take tenths of a second to import; no command loads them before it runs.
HEAVY = ("sqlalchemy", "psycopg", "celery", "kombu", "redis", "alembic", "httpx", "prometheus_client", "rich")


def loaded_after(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; the heavy libraries and ``jobs`` modules it loaded."""
    probe = (
        "import sys, json\n"
        f"{code}\n"
        "names = sorted(sys.modules)\n"
        f"heavy = sorted({{n.split('.')[0] for n in names}} & set({HEAVY!r} + ('pydantic',)))\n"
        "print(json.dumps({'heavy': heavy, 'jobs': [n for n in names if n.startswith('jobs')]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, list[str]] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_import_jobs_loads_no_database_broker_or_validation_library():
    loaded = loaded_after("import jobs")
    assert loaded["heavy"] == []
    assert loaded["jobs"] == ["jobs"]


def test_the_public_names_load_on_first_use():
    loaded = loaded_after("import jobs\njobs.RetryLater\njobs.Backoff")
    assert loaded["heavy"] == []
    loaded = loaded_after("import jobs\njobs.kind")
    assert "pydantic" in loaded["heavy"]
    assert "sqlalchemy" not in loaded["heavy"]


def test_help_imports_no_command_module():
    loaded = loaded_after(
        "from jobs.cli.main import cli\n"
        "try:\n"
        "    cli(['--help'], prog_name='jobs')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
    )
    assert loaded["heavy"] == []
    commands = {target.partition(":")[0] for target, _ in cli_main.COMMANDS.values()}
    assert not commands & set(loaded["jobs"]), loaded["jobs"]


def test_no_command_module_loads_a_heavy_library_when_imported():
    """Completing a command line imports its module: it must not pay for the ledger, Celery or rich."""
    modules = sorted({target.partition(":")[0] for target, _ in cli_main.COMMANDS.values()})
    loaded = loaded_after("\n".join(f"import {module}" for module in modules))
    assert loaded["heavy"] == []


@pytest.mark.parametrize("name", sorted(cli_main.COMMANDS))
@pytest.mark.parametrize("limit", [30, 45, 66, 200])
def test_the_one_line_help_in_the_table_is_the_commands_own(name, limit):
    group = cli_main.JobsGroup(name="jobs")
    stand_in = group.summary(name)
    real = group.get_command(click.Context(group), name)
    assert stand_in is not None
    assert real is not None
    assert stand_in.get_short_help_str(limit) == real.get_short_help_str(limit)


def test_help_lists_the_commands_as_click_would_with_every_command_loaded():
    lazy = CliRunner().invoke(cli_main.cli, ["--help"], prog_name="jobs", terminal_width=100)
    loaded = click.Group(name="jobs", help=cli_main.cli.help, params=list(cli_main.cli.params))
    for name in cli_main.COMMANDS:
        command = cli_main.cli.get_command(click.Context(cli_main.cli), name)
        assert command is not None
        loaded.add_command(command, name)
    eager = CliRunner().invoke(loaded, ["--help"], prog_name="jobs", terminal_width=100)
    assert lazy.exit_code == 0, lazy.output
    assert lazy.output.split("Commands:")[1] == eager.output.split("Commands:")[1]
    for name in cli_main.COMMANDS:
        assert f"\n  {name} " in lazy.output


def test_schedule_policies_offered_by_the_cli_are_the_schedulers():
    from jobs import schedules

    assert schedule_cli.MISFIRE_POLICIES == schedules.MISFIRE_POLICIES
    assert schedule_cli.OVERLAP_POLICIES == schedules.OVERLAP_POLICIES


def test_states_offered_by_the_cli_are_the_ledgers():
    from jobs import schema, states

    assert states.STATES is schema.STATES
    assert set(states.TERMINAL_STATES) <= set(states.STATES)
