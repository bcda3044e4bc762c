"""Every ``jobs`` command a script may call has ``--json``; shell completion works.

The exceptions are the long-running processes (``worker``, ``beat``,
``flower``, ``dev``): they print logs, not a result, and ``JOBS_LOG_FORMAT=json``
makes those logs one JSON object per line (docs/operations.md, "--json").
Walking the click tree means a new command cannot forget the option.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import click
import pytest

from jobs.cli.main import cli
from tests.support.fixtures import ROOT

PROCESS_COMMANDS = {"worker", "beat", "flower", "dev"}


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every command a user can run: leaves, and groups that do something on their own."""
    context = click.Context(group)
    for name in group.list_commands(context):  # the public way: loads lazily registered commands
        command = group.get_command(context, name)
        assert command is not None, name
        here = (*path, name)
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                yield " ".join(here), command
            yield from commands(command, here)
        else:
            yield " ".join(here), command


def has_json(command: click.Command) -> bool:
    return any(isinstance(p, click.Option) and "--json" in p.opts and p.is_flag for p in command.params)


def test_the_walk_finds_the_commands_it_should():
    found = dict(commands(cli))
    for name in ("submit", "cancel", "retry", "queue pause", "queue resume", "db upgrade", "kinds", "worker"):
        assert name in found, sorted(found)


@pytest.mark.parametrize("name", [name for name, _ in commands(cli) if name not in PROCESS_COMMANDS])
def test_every_command_has_a_json_option(name):
    command = dict(commands(cli))[name]
    assert has_json(command), (
        f"`jobs {name}` has no --json flag (only {sorted(PROCESS_COMMANDS)} may omit it)"
    )


def test_the_process_commands_are_the_only_exceptions_and_still_exist():
    found = dict(commands(cli))
    assert set(found) >= PROCESS_COMMANDS
    for name in PROCESS_COMMANDS:
        assert not has_json(found[name]), f"jobs {name} gained --json: take it off the exception list"


def test_bash_completion_script_is_printed():
    result = subprocess.run(
        [sys.executable, "-m", "jobs"],
        cwd=ROOT,
        env={**os.environ, "_JOBS_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "_jobs_completion()" in result.stdout
    assert "complete -o nosort -F _jobs_completion jobs" in result.stdout


def test_bash_completion_completes_a_command_name():
    result = subprocess.run(
        [sys.executable, "-m", "jobs"],
        cwd=ROOT,
        env={
            **os.environ,
            "_JOBS_COMPLETE": "bash_complete",
            "COMP_WORDS": "jobs queue pa",
            "COMP_CWORD": "2",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain,pause"]
